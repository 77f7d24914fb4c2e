"""`headsmith tune`: Optuna trials of real training runs, pruned through Lightning, summed up, best kept as a
recipe that reproduces the best trial."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from headsmith.config import compose_train_config
from headsmith.errors import HeadsmithError
from headsmith.training.tune import Tuner, distribution
from conftest import run_cli, wandb_records


@pytest.fixture
def tiny(tiny_backbone):
    return ["dataset.snapshot=reviews", "fit=sgd", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
            "backbone.max_tokens=32", "trainer=cpu", "trainer.enable_progress_bar=false", "dataset.batch_size=32",
            "name=reviews", "selection.head=sentiment"]


def test_a_tiny_sweep_prunes_summarises_and_writes_the_best_recipe(workspace, reviews_snapshot, tiny):
    result = Tuner([*tiny, "trainer.max_epochs=3", "tune.trials=4", "tune.pruner._target_=plugins.PruneOddTrials",
                    "~tune.pruner.n_startup_trials", "~tune.pruner.n_warmup_steps", "head=mlp", "logger=wandb",
                    "optimizer.lr=tag(log, interval(1e-3, 1e-1))", "head.hidden=choice(8, 16, 32)"]).run()
    summary = pd.read_csv(result["folder"] / "trials.csv")
    assert summary["trial"].tolist() == [0, 1, 2, 3]
    # Odd trials are pruned by Lightning at their first validation, the others train their 3 epochs.
    assert summary["state"].tolist() == ["complete", "pruned", "complete", "pruned"]
    assert summary["epochs"].tolist() == [3, 1, 3, 1] and result["pruned"] == 2
    assert summary.loc[summary["state"] == "pruned", "objective"].isna().all()  # a pruned trial has no final score
    for _, row in summary.iterrows():  # each trial ran with the values the summary shows, as its own W&B run
        trial = result["folder"] / f"trial-{row['trial']:03d}"
        config = OmegaConf.load(trial / "config.yaml")
        assert config.head.hidden == row["head.hidden"] and config.optimizer.lr == row["optimizer.lr"]
        records = wandb_records(next((trial / "wandb").glob("offline-run-*")))
        [run] = [r.run for r in records if r.HasField("run")]
        assert (run.display_name, run.run_group) == (f"reviews-trial-{row['trial']:03d}", result["folder"].name)
        [exit_record] = [r.exit for r in records if r.HasField("exit")]
        assert exit_record.exit_code == (0 if row["state"] == "complete" else 1)
    done = summary[summary["state"] == "complete"]
    for row in done.itertuples():
        metrics = json.loads((result["folder"] / f"trial-{row.trial:03d}" / "metrics.json").read_text())
        assert row.objective == pytest.approx(metrics["selection"]["best_score"], abs=1e-12)
    best = done.loc[done["objective"].idxmax()]
    assert result["best_trial"] == best["trial"] and result["best_value"] == pytest.approx(best["objective"])
    # Only the best trial keeps its model package (tune.keep_models=best).
    assert [t for t in range(4) if (result["folder"] / f"trial-{t:03d}" / "model").is_dir()] == [best["trial"]]
    assert (result["folder"] / "tune.png").stat().st_size > 10_000

    # The best recipe is a workspace recipe that composes to the best trial's config.
    assert result["recipe"] == workspace.recipes_dir / "reviews-tuned.yaml"
    assert (result["folder"] / "best.yaml").read_text() == result["recipe"].read_text()
    trial = OmegaConf.load(result["folder"] / f"trial-{best['trial']:03d}" / "config.yaml")
    again = compose_train_config(["recipe=reviews-tuned", "paths.output_dir=x"])
    assert again.name == "reviews-tuned"
    assert again.optimizer.lr == trial.optimizer.lr and again.head == trial.head
    for key in ("seed", "dataset", "backbone", "head", "optimizer", "scheduler", "selection", "trainer",
                "thresholds", "callbacks.early_stopping"):
        assert OmegaConf.select(again, key) == OmegaConf.select(trial, key), key


@pytest.mark.parametrize("expression, expected", [
    ("tag(log, interval(1e-4, 1e-1))", ("FloatDistribution", 1e-4, 1e-1, True)),
    ("interval(0, 0.5)", ("FloatDistribution", 0.0, 0.5, False)),
    ("range(32, 257, 32)", ("IntDistribution", 32, 256, False)),
    ("tag(log, range(8, 513))", ("IntDistribution", 8, 512, True)),
])
def test_sweep_expressions_become_optuna_distributions(expression, expected):
    d = distribution("key", expression)
    assert (type(d).__name__, d.low, d.high, d.log) == expected
    assert distribution("head", "choice(linear, mlp)").choices == ("linear", "mlp")


def test_tune_mistakes_are_named_before_any_trial(workspace, reviews_snapshot, tiny):
    with pytest.raises(HeadsmithError, match="nothing to tune"):
        Tuner(tiny)
    with pytest.raises(HeadsmithError, match=r"key=tag\(log, interval\(0, 1\)\): a log scale needs a positive"):
        distribution("key", "tag(log, interval(0, 1))")
    with pytest.raises(HeadsmithError, match="tune.trials=0"):
        Tuner([*tiny, "tune.trials=0", "optimizer.lr=interval(1e-3, 1e-2)"])
    # A key the recipe does not have: Hydra's message, before the study starts.
    result = run_cli("tune", *tiny, "head.hidden=choice(8, 16)")
    assert result.returncode == 2
    assert "Could not override 'head.hidden'" in result.stderr
    assert not list(workspace.runs_dir.rglob("trial-*"))


def test_tune_searches_backbone_modes_trainable_blocks_and_lora_rank(workspace, reviews_snapshot, tiny):
    result = Tuner([*tiny, "trainer.max_epochs=1", "tune.trials=5", "backbone.mode=choice(frozen, partial, lora)",
                    "backbone.trainable_blocks=range(1, 3)", "backbone.lora.rank=choice(2, 4)"]).run()
    summary = pd.read_csv(result["folder"] / "trials.csv")
    assert summary["objective"].notna().all()
    for _, row in summary.iterrows():  # each trial trained as its row says
        config = OmegaConf.load(result["folder"] / f"trial-{row['trial']:03d}" / "config.yaml")
        assert (config.backbone.mode, config.backbone.trainable_blocks, config.backbone.lora.rank) == (
            row["backbone.mode"], row["backbone.trainable_blocks"], row["backbone.lora.rank"])
    assert set(summary["backbone.mode"]) == {"frozen", "partial", "lora"}  # the seeded sampler draws each
    assert list((workspace.root / "cache" / "trunks").glob("*-block*"))  # partial trials train on the cached trunk
