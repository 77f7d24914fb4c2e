"""A run killed with kill -9 in the middle of an epoch resumes from its last checkpoint and ends where an
uninterrupted run with the same seed ends: same best checkpoint, same weights, same metrics."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import torch

from headsmith.config import compose_train_config
from headsmith.training.train import train

from conftest import run_cli

TESTS = str(Path(__file__).parent)


def test_a_run_killed_mid_epoch_resumes_to_the_same_best_checkpoint(workspace, reviews_snapshot, tiny_backbone):
    # An MLP head with dropout: randomness in every step, which a resumed run must reproduce too.
    recipe = ["dataset.snapshot=reviews", "fit=sgd", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
              "backbone.max_tokens=32", "trainer=cpu", "trainer.max_epochs=6", "trainer.enable_progress_bar=false",
              "dataset.batch_size=32", "head=mlp", "head.hidden=16", "optimizer.lr=3e-3", "scheduler=cosine"]
    # The uninterrupted reference, in this process (the same train() the command runs, the same threads and seed).
    straight_dir = workspace.runs_dir / "straight"
    train(compose_train_config([*recipe, f"paths.output_dir={straight_dir}"]))

    # 168 training rows in batches of 32: 6 steps an epoch, so step 15 is the middle of the third epoch.
    crash = ["+callbacks.kill._target_=plugins.KillAtStep", "+callbacks.kill.step=15"]
    killed = run_cli("train", *recipe, *crash, "name=killed", env={"PYTHONPATH": TESTS})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    [run_dir] = (workspace.runs_dir / "killed").iterdir()
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1

    # Resumed, and killed again in the middle of the fifth epoch (steps 24-29): the history of both runs is kept.
    again = run_cli("train", f"resume={run_dir}", "callbacks.kill.step=27", env={"PYTHONPATH": TESTS})
    assert again.returncode == -signal.SIGKILL, again.stdout + again.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 3

    resumed = run_cli("train", f"resume={run_dir}", "~callbacks.kill", env={"PYTHONPATH": TESTS})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr

    expected, got = (json.loads((d / "metrics.json").read_text()) for d in (straight_dir, run_dir))
    assert got["epochs_trained"] == expected["epochs_trained"]
    for key in ("best_epoch", "best_score"):
        assert got["selection"][key] == expected["selection"][key]
    assert Path(got["selection"]["checkpoint"]).name == Path(expected["selection"]["checkpoint"]).name
    assert got["val"] == expected["val"] and got["test"] == expected["test"]
    # One metrics.csv with the whole history: before each kill, then after the last resume, as the straight run
    # logged it.
    history = [pd.read_csv(d / "logs" / "metrics.csv").dropna(subset=["val/f1"]) for d in (straight_dir, run_dir)]
    assert history[1]["epoch"].tolist() == history[0]["epoch"].tolist()
    assert history[1]["val/f1"].tolist() == history[0]["val/f1"].tolist()
    weights = [torch.load(m["selection"]["checkpoint"], weights_only=False)["state_dict"] for m in (expected, got)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_names_what_is_missing(workspace, tmp_path):
    result = run_cli("train", f"resume={tmp_path}")
    assert result.returncode == 2
    assert f"resume={tmp_path}: not a training run folder" in result.stderr
