"""Concurrent image fetching vs one at a time, measured in the same run against a local server with latency.

    .venv/bin/python bench/fetch_images.py [--images 100] [--latency 0.1] [--concurrency 16]

Target (issue 3): >= 5x the images/s of a one-at-a-time fetch with 100 ms server latency."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from image_server import ImageServer  # noqa: E402

from headsmith.data.media import BlobStore, MediaFetcher  # noqa: E402


def images_per_second(server: ImageServer, n: int, concurrency: int, offset: int) -> float:
    refs = [(i, f"{server.url}/latency/{offset + i}.png") for i in range(n)]
    results = []
    with tempfile.TemporaryDirectory() as blobs:
        fetcher = MediaFetcher(BlobStore(Path(blobs)), concurrency=concurrency, retries=0)
        start = time.perf_counter()
        fetcher.fetch_many(refs, lambda key, result: results.append(result.ok), description=f"concurrency {concurrency}")
        elapsed = time.perf_counter() - start
    assert all(results) and len(results) == n, "every image must be fetched"
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    server = ImageServer(latency=args.latency)
    try:
        baseline = images_per_second(server, args.images, 1, offset=0)
        concurrent = images_per_second(server, args.images, args.concurrency, offset=args.images)
    finally:
        server.close()
    ratio = concurrent / baseline
    print(f"{args.images} PNGs, {args.latency * 1000:.0f} ms server latency")
    print(f"one at a time:        {baseline:8.1f} images/s")
    print(f"concurrency {args.concurrency:<3}       {concurrent:8.1f} images/s")
    print(f"speed-up:             {ratio:8.1f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    return 0 if ratio >= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
