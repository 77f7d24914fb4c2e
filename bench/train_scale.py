"""A frozen run (the default: MiniLM, linear heads solved) on 100k and 1M rows: `headsmith train`, the real command
in its own process, timed, with its peak memory; the same with `fit.search_rows=null` (every non-test row held in
memory for the search, as before issue 16) as the baseline, where it fits.

    .venv/bin/python bench/train_scale.py [--rows 100000 1000000] [--baseline-rows 1000000] [--dir /tmp/headsmith-train]

The snapshot is bench/dataset_scale.py's synthetic one (two heads: spam, 2 classes; topic, 6). Embedding a million
texts takes this machine an hour, and what is measured here is everything after it, so the embedding cache is
written directly: 384 dimensions a row, each class of each head its own random direction plus unit noise (learnable,
not separable). The run then reads it as it reads a cache it filled itself. Target (issue 16): peak memory does not
grow with the rows (a frozen run never holds every row's embedding). Needs about 4 GB of disk per million rows."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from dataset_scale import TOPICS, run, write_csv  # noqa: E402


def fill_cache(home: Path) -> None:
    """The embedding cache of snapshot 'synthetic' for the default backbone, as EmbeddingCache names it."""
    import pyarrow.parquet as pq
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from headsmith.config import config_dir
    from headsmith.data.snapshot import DATA_FILE, load_snapshot
    from headsmith.training.embedding_cache import SHARD_ROWS, EmbeddingCache, computed_once
    from headsmith.workspace import Workspace

    workspace = Workspace(home)
    snapshot = load_snapshot(workspace, "synthetic")
    backbone = instantiate(OmegaConf.load(config_dir() / "backbone" / "minilm.yaml"))
    directions = np.random.default_rng(0).normal(size=(2 + len(TOPICS), backbone.out_dim)).astype(np.float32) * 0.15
    codes = {"no": 0, "yes": 1, **{t: 2 + i for i, t in enumerate(TOPICS)}}

    def fill(folder: Path) -> None:
        batches = pq.ParquetFile(snapshot.path / DATA_FILE).iter_batches(SHARD_ROWS, columns=["spam", "topic"])
        for k, batch in enumerate(batches):
            rng = np.random.default_rng(k + 1)
            spam, topic = ([codes[v] for v in batch.column(i).to_pylist()] for i in range(2))
            rows = rng.normal(size=(batch.num_rows, backbone.out_dim)).astype(np.float32)
            rows += directions[spam] + directions[topic]
            np.save(folder / f"shard-{k:06d}.npy", rows)

    computed_once(EmbeddingCache(workspace).path(snapshot, backbone), fill)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--baseline-rows", type=int, nargs="*", default=[1_000_000],
                        help="sizes also run with fit.search_rows=null (memory grows with the rows)")
    parser.add_argument("--dir", default="/tmp/headsmith-train")
    args = parser.parse_args()
    print("| rows | fit | train | peak memory | spam test F1 | topic test F1 |")
    print("|---|---|---|---|---|---|")
    for rows in args.rows:
        folder = Path(args.dir) / str(rows)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write_csv(folder / "synthetic.csv", rows)
        env = {**os.environ, "HEADSMITH_HOME": str(folder / "workspace"), "HF_HUB_OFFLINE": "1",
               "WANDB_MODE": "offline"}
        run(["dataset", "import", str(folder / "synthetic.csv"), "--name", "synthetic", "--yes"], env)
        run(["snapshot", "create", "synthetic", "--name", "synthetic", "--input", "text", "--label", "spam=spam",
             "--label", "topic=topic"], env)
        (folder / "synthetic.csv").unlink()
        fill_cache(folder / "workspace")
        for search_rows in ["100000", *(["null"] if rows in args.baseline_rows else [])]:
            output = folder / f"run-{search_rows}"
            seconds, peak, _ = run(["train", "dataset.snapshot=synthetic", f"fit.search_rows={search_rows}",
                                    f"paths.output_dir={output}", "trainer.enable_progress_bar=false"], env)
            test = json.loads((output / "metrics.json").read_text())["test"]
            fit = "searched on 100k, fit on all" if search_rows != "null" else "all rows in memory"
            print(f"| {rows:,} | {fit} | {seconds:.0f} s | {peak:.2f} GB | {test['spam']['f1']:.3f} "
                  f"| {test['topic']['f1']:.3f} |", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
