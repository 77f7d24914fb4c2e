"""Quality of the default run against the simplest honest baseline, on every bundled real task.

    .venv/bin/python bench/quality.py [--seeds 42 1 2] [--recipes ...] [--out quality.csv] [OVERRIDE ...]

For each task (the demo's reviews: `sentiment`; the text walkthrough's `kind` and `party`; the vision walkthrough's
`digit` and `face`) and each seed of the split, the bundled recipe runs as a user runs it (`headsmith train
recipe=NAME seed=SEED`), and scikit-learn's logistic regression is fit on the same split and the same cached
embeddings: LogisticRegressionCV(Cs=[0.01, 0.1, 1, 10, 100], cv=5, scoring=macro F1, max_iter=3000), no class
weights, no scaling, fit on all non-test rows. Both are scored by test macro F1. Also: the wall time of the frozen
fit (search included) as a ratio to one backbone pass over the snapshot's rows.

Target (issue 13): default run - logistic regression >= 0.000 macro F1 on every task, mean over the seeds."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

TASKS = {  # recipe -> (snapshot, heads)
    "sentiment": ("rotten-tomatoes", ["sentiment"]),
    "text-base": ("text-base", ["kind", "party"]),
    "vision-base": ("vision-base", ["digit", "face"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=None, help="also write every row as CSV")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. head=mlp")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="headsmith-quality-"))
    os.environ["HEADSMITH_HOME"] = str(home)

    import numpy as np
    import pandas as pd
    from hydra.utils import instantiate
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import f1_score, make_scorer

    from headsmith.config import compose_train_config
    from headsmith.data.dataset import fetch_media, import_dataset
    from headsmith.data.examples import rotten_tomatoes, text_base, vision_base
    from headsmith.data.ingest import infer_columns, read_table
    from headsmith.data.snapshot import create_snapshot
    from headsmith.training.embedding_cache import EmbeddingCache
    from headsmith.training.solve import fit_rows
    from headsmith.training.train import train
    from headsmith.workspace import Workspace

    workspace = Workspace()
    writers = {"rotten-tomatoes": (rotten_tomatoes, {"movie": "ignore"}, "text", "text-classification"),
               "text-base": (text_base, {"kind": "label", "party": "label"}, "text", "text-classification"),
               "vision-base": (vision_base, {"digit": "label", "face": "label"}, "image", "image-classification")}
    rows, passes = [], {}
    for recipe in args.recipes:
        name, heads = TASKS[recipe]
        write, types, input_column, kind = writers[name]
        table = read_table(write(home / "data" / f"{name}.csv"))
        import_dataset(workspace, name, table, infer_columns(table, types))
        fetch_media(workspace, name)
        snapshot = create_snapshot(workspace, name, name=name, input_column=input_column, type=kind,
                                   labels={h: h for h in heads})
        cfg = compose_train_config([f"recipe={recipe}", "paths.output_dir=unused"])
        backbone = instantiate(cfg.backbone)
        start = time.perf_counter()
        features = EmbeddingCache(workspace).features(snapshot, backbone).numpy()  # one backbone pass, then cached
        passes[recipe] = time.perf_counter() - start
        for seed in args.seeds:
            cfg = compose_train_config([f"recipe={recipe}", f"seed={seed}", "trainer.enable_progress_bar=false",
                                        f"paths.output_dir={home / 'runs' / recipe / str(seed)}", *args.overrides])
            metrics, objects = train(cfg)
            non_test, test = fit_rows(objects["datamodule"].splits), objects["datamodule"].splits["test"]
            for head in heads:
                fit = non_test[non_test[head].notna()]
                held = test[test[head].notna()]
                baseline = LogisticRegressionCV(Cs=[0.01, 0.1, 1, 10, 100], cv=5, max_iter=3000,
                                                scoring=make_scorer(f1_score, average="macro"))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", (ConvergenceWarning, FutureWarning, UserWarning))
                    baseline.fit(features[fit["position"]].astype(np.float64), fit[head])
                ours = metrics["test"][head]["f1"]
                with warnings.catch_warnings():  # scikit-learn notes that pos_label means nothing for a macro F1
                    warnings.simplefilter("ignore", UserWarning)
                    theirs = f1_score(held[head], baseline.predict(features[held["position"]].astype(np.float64)),
                                      average="macro")
                rows.append({"recipe": recipe, "head": head, "seed": seed, "headsmith": ours, "logreg": theirs,
                             "difference": ours - theirs, "chosen": metrics["selection"]["chosen"][head],
                             "logreg_C": float(baseline.C_[0]), "fit_seconds": metrics["fit"]["seconds"],
                             "one_pass_seconds": passes[recipe]})
                print(f"{recipe:12s} {head:10s} seed {seed:3d}  headsmith {ours:.4f}  logistic regression "
                      f"{theirs:.4f}  difference {ours - theirs:+.4f}  ({rows[-1]['chosen']}; logreg C="
                      f"{baseline.C_[0]:g})", flush=True)
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    summary = frame.groupby(["recipe", "head"], sort=False).agg(
        headsmith=("headsmith", "mean"), logreg=("logreg", "mean"), difference=("difference", "mean"),
        spread=("difference", "std"), fit_seconds=("fit_seconds", "mean"), one_pass=("one_pass_seconds", "first"))
    summary["fit / one pass"] = summary["fit_seconds"] / summary["one_pass"]
    print(f"\nmeans over seeds {args.seeds} (test macro F1; spread: standard deviation of the difference)")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    met = bool((summary["difference"].round(4) >= 0).all())  # as printed: to 4 decimals
    print(f"target: difference >= 0.000 on every task: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
