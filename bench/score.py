"""Batch scoring of a file (`headsmith score`) against the best in-process scoring of the same rows, in one run.

    .venv/bin/python bench/score.py [--model sentiment-finetune] [--rows 12808] [--home workspace] [--ray]

Writes the demo's real review snippets (repeated up to --rows) as a CSV with an id column, then times (a) the
model's own batched scoring of every text in one process, in batches of 64 of similar length (the limit), and (b)
`score_file` on the CSV: reading it in chunks, scoring, writing Parquet parts and the manifest. MODEL is a registered
NAME[:VERSION] or a package folder (default: `sentiment-finetune`, which `make demo` trains; its newest run is
registered here if missing). With --ray, also (c) `score --engine ray` on a local Ray of 2 actors with 1 thread
each, against (b) with this process's 2 threads. Targets (issue 16): (b) >= 0.9x the throughput of (a), the same
scores; (c) >= 0.8x (b), the same output (scores within 1e-5, all else equal)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from demo_model import demo_model  # noqa: E402  (bench/, beside this script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentiment-finetune")
    parser.add_argument("--rows", type=int, default=12_808)
    parser.add_argument("--home", default=os.environ.get("HEADSMITH_HOME", "workspace"))
    parser.add_argument("--ray", action="store_true", help="also score with --engine ray (needs headsmith[ray])")
    args = parser.parse_args()
    os.environ["HEADSMITH_HOME"] = str(Path(args.home).resolve())

    import numpy as np
    import pandas as pd

    from headsmith.data.examples import rotten_tomatoes
    from headsmith.predictor import open_predictor
    from headsmith.engines import RayOptions, stop_ray
    from headsmith.scoring import RayEngine, score_file
    from headsmith.workspace import Workspace

    workspace = Workspace()
    predictor = open_predictor(workspace, demo_model(workspace, args.model))
    folder = Path(tempfile.mkdtemp(prefix="headsmith-score-"))
    try:
        texts = pd.read_csv(rotten_tomatoes(folder / "reviews.csv"))["text"].tolist()
        texts = (texts * (-(-args.rows // len(texts))))[:args.rows]
        pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(folder / "backlog.csv", index=False)

        predictor.net.scores(texts[:1024], 64, by_length=True)  # warm-up: first calls pay for kernel choices
        start = time.perf_counter()
        limit = predictor.net.scores(texts, 64, by_length=True)
        in_process = time.perf_counter() - start

        start = time.perf_counter()
        score_file(predictor, str(folder / "backlog.csv"), folder / "scored", "text", ["id"])
        scoring = time.perf_counter() - start
        scored = pd.read_parquet(folder / "scored")
        head, classes = next(iter(predictor.card.heads.items()))
        columns = [f"{head}:score:{label}" for label in classes]
        difference = float(np.abs(scored[columns].to_numpy() - limit[head].numpy()).max())
        if args.ray:
            engine = RayEngine(predictor.package, predictor.batch_size, RayOptions(workers=2, threads=1))
            try:  # the actors' start and model loads are part of the time
                start = time.perf_counter()
                score_file(predictor, str(folder / "backlog.csv"), folder / "ray", "text", ["id"], engine=engine)
                on_ray = time.perf_counter() - start
            finally:
                stop_ray()
            by_ray = pd.read_parquet(folder / "ray")
            exact = [c for c in scored.columns if ":score:" not in c]
            same = by_ray[exact].equals(scored[exact]) and float(
                np.abs(by_ray[columns].to_numpy() - scored[columns].to_numpy()).max()) <= 1e-5
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratio = in_process / scoring
    print(f"model {predictor.name}, {len(texts)} real review snippets; figures vary by machine")
    print(f"in-process scoring, batches of 64 of similar length: {len(texts) / in_process:7.1f} texts/s (the limit)")
    print(f"headsmith score (CSV in, Parquet parts out):        {len(texts) / scoring:7.1f} texts/s "
          f"({ratio:.2f}x the limit); largest score difference {difference:.1e}")
    met = ratio >= 0.9 and difference <= 1e-5
    print(f"target: >= 0.9x the limit, the same scores: {'met' if met else 'NOT met'}")
    if args.ray:
        print(f"headsmith score --engine ray, 2 actors x 1 thread:  {len(texts) / on_ray:7.1f} texts/s "
              f"({scoring / on_ray:.2f}x the local path); the same output: {same}")
        ray_met = scoring / on_ray >= 0.8 and same
        print(f"target: >= 0.8x the local path, the same output: {'met' if ray_met else 'NOT met'}")
        met = met and ray_met
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
