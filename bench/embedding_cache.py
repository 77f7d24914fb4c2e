"""Frozen-backbone training with the embedding cache, against baselines measured in the same run, on real reviews
with the real MiniLM backbone.

    .venv/bin/python bench/embedding_cache.py [--rows 1000] [--epochs 10]

Targets (issue 4): (a) 10 epochs with the cache vs recomputing the backbone every epoch: >= 5x faster;
(b) the whole frozen training (first run, the cache filled on the way) vs one backbone pass over the same rows:
<= 1.3x; (c) a second training run on the same snapshot vs the first: <= 0.15x."""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="headsmith-bench-"))
    os.environ["HEADSMITH_HOME"] = str(home)

    import pandas as pd

    from headsmith.config import compose_train_config
    from headsmith.data.dataset import import_dataset
    from headsmith.data.examples import rotten_tomatoes
    from headsmith.data.ingest import infer_columns, read_table
    from headsmith.data.snapshot import create_snapshot
    from headsmith.models.backbones import text_backbone
    from headsmith.training.embedding_cache import embed
    from headsmith.training.train import train
    from headsmith.workspace import Workspace

    workspace = Workspace()
    reviews = pd.read_csv(rotten_tomatoes(home / "reviews.csv")).sample(args.rows, random_state=0)
    reviews.to_csv(home / "sample.csv", index=False)
    table = read_table(home / "sample.csv")
    import_dataset(workspace, "sample", table, infer_columns(table, {"movie": "ignore"}))
    snapshot = create_snapshot(workspace, "sample", name="sample", input_column="text",
                               labels={"sentiment": "sentiment"})

    def run(tag: str, *overrides: str) -> float:
        cfg = compose_train_config([f"paths.output_dir={home / tag}", "dataset.snapshot=sample", "trainer=cpu",
                                    f"trainer.max_epochs={args.epochs}", "~callbacks.early_stopping",
                                    "trainer.enable_progress_bar=false", *overrides])
        gc.collect()  # each run pays for its own garbage, not for the previous run's (a CLI run starts clean)
        start = time.perf_counter()
        train(cfg)
        return time.perf_counter() - start

    backbone = text_backbone()
    start = time.perf_counter()
    embed(backbone, snapshot.frame()["input"].tolist())
    one_pass = time.perf_counter() - start
    first = run("first")
    second = run("second")
    uncached = run("uncached", "embedding_cache=false")

    a, b, c = uncached / first, first / one_pass, second / first
    print(f"{args.rows} real reviews, all-MiniLM-L6-v2 frozen, {args.epochs} epochs, 2-core CPU figures vary by machine")
    print(f"one backbone pass over the rows:      {one_pass:7.1f} s")
    print(f"training, first run (fills the cache): {first:7.1f} s")
    print(f"training, second run (cache warm):     {second:7.1f} s")
    print(f"training, cache off (recomputes):      {uncached:7.1f} s")
    print(f"(a) cache off / cache on:   {a:5.2f}x  target >= 5     {'met' if a >= 5 else 'NOT met'}")
    print(f"(b) first run / one pass:   {b:5.2f}x  target <= 1.3   {'met' if b <= 1.3 else 'NOT met'}")
    print(f"(c) second run / first run: {c:5.2f}x  target <= 0.15  {'met' if c <= 0.15 else 'NOT met'}")
    return 0 if a >= 5 and b <= 1.3 and c <= 0.15 else 1


if __name__ == "__main__":
    raise SystemExit(main())
