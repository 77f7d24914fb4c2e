"""trainer=ddp on CPU: two processes (gloo) through the `headsmith` command, as a user launches it. The metrics
Lightning computes over both ranks' shards equal a single-process evaluation of the same model on the same rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_cli, snapshot_csv

DDP = ["fit=sgd", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false"]


@pytest.fixture
def odd_test_snapshot(workspace, reviews, tmp_path):
    """37 other real reviews with the same heads: an odd number, so the two ranks' shards differ in size. `long`
    labels only 25 of them: the heads label different rows."""
    rows = pd.concat([g.iloc[120:139] for _, g in reviews.groupby("sentiment")]).head(37).reset_index(drop=True)
    rows["long"] = (rows["text"].str.len() > 100).map({True: "yes", False: "no"})
    rows.loc[rows.index % 3 == 1, "long"] = None
    rows.to_csv(tmp_path / "held-out.csv", index=False)
    return snapshot_csv(workspace, tmp_path / "held-out.csv", "held-out", "text",
                        {"sentiment": "sentiment", "long": "long"})


@pytest.fixture
def tiny(tiny_backbone):
    return ["dataset.snapshot=reviews", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
            "backbone.max_tokens=32", "dataset.batch_size=16", "trainer.max_epochs=2"]


def test_ddp_on_cpu_metrics_synced_across_two_processes(workspace, reviews_snapshot, odd_test_snapshot, tiny):
    result = run_cli("train", *tiny, *DDP, "name=ddp", "dataset.test_snapshot=held-out", "class_weights=none")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    for snapshot, rows in (("reviews", 240), ("held-out", 37)):  # once, not once per rank
        assert output.count(f"embedded {rows} rows of snapshot '{snapshot}'") == 1

    [run] = (workspace.runs_dir / "ddp").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    splits = metrics["splits"]
    assert splits["test"] == 37
    # Each rank trained on half the rows: half the optimizer steps of one process.
    checkpoint = torch.load(metrics["selection"]["checkpoint"], weights_only=False)
    steps_per_epoch = math.ceil(math.ceil(splits["train"] / 2) / 16)
    assert checkpoint["global_step"] == (checkpoint["epoch"] + 1) * steps_per_epoch

    # Lightning's test loop ran on both ranks and synced; metrics.json's test metrics come from one process
    # scoring every test row with the same weights.
    logged = pd.read_csv(run / "logs" / "metrics.csv").dropna(subset=["test/f1"]).iloc[-1]
    single = metrics["test"]
    for head, summary in single.items():
        assert logged[f"test/{head}/support"] == summary["support"] == {"sentiment": 37, "long": 25}[head]
        for metric in ("precision", "recall", "f1", "balanced_accuracy"):
            assert logged[f"test/{head}/{metric}"] == pytest.approx(summary[metric], abs=1e-6), (head, metric)
        for label, values in summary["classes"].items():
            assert logged[f"test/{head}/support/{label}"] == values["support"]
            for metric in ("precision", "recall", "f1", "balanced_accuracy"):
                assert logged[f"test/{head}/{metric}/{label}"] == pytest.approx(values[metric], abs=1e-6)
    # Each head's test loss is the mean cross-entropy over the rows that label it, both ranks' rows counted once;
    # the total is the sum of the heads' means, as the training loss is.
    predictions = pd.read_parquet(run / "eval" / "predictions.parquet")
    means = {}
    for head in single:
        label_scores = [row[f"{head}:score:{row[head]}"] for _, row in predictions.iterrows() if pd.notna(row[head])]
        means[head] = -np.log(label_scores).mean()
        assert logged[f"test/{head}/loss"] == pytest.approx(means[head], abs=1e-5), head
    assert logged["test/loss"] == pytest.approx(sum(means.values()), abs=1e-5)


def test_multirun_sweep_of_ddp_runs(workspace, reviews_snapshot, tiny):
    """Two DDP jobs of a sweep, each fine-tuning LoRA adapters on both processes."""
    result = run_cli("train", *tiny, *DDP, "name=sweep", "trainer.max_epochs=1", "backbone.mode=lora",
                     "backbone.lora.rank=2", "-m", "optimizer.lr=1e-3,1e-2")
    assert result.returncode == 0, result.stdout + result.stderr
    # One sweep folder with one folder per job: the other ranks ran their job, not the sweep again.
    [sweep] = (workspace.runs_dir / "sweep").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    lrs = [OmegaConf.load(sweep / job / "config.yaml").optimizer.lr for job in ("0", "1")]
    assert lrs == [1e-3, 1e-2]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["test"]["sentiment"]["support"] == metrics["splits"]["test"]
        assert json.loads((sweep / job / "model" / "model.json").read_text())["format_version"] == 2


def test_torchrun_launch_writes_one_run(workspace, reviews_snapshot, tiny):
    """How several machines (or GPUs) are launched: torchrun starts every rank; they share one run folder."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "headsmith.training.command",
                             *tiny, *DDP, "name=elastic"], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    [run] = (workspace.runs_dir / "elastic").iterdir()
    assert run.name.startswith("torchrun-")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["sentiment"]["support"] == metrics["splits"]["test"]


def test_slurm_launcher_config_and_a_submitit_sweep(workspace, reviews_snapshot, tiny):
    shown = run_cli("train", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                    *tiny, "--cfg", "all")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    launcher = OmegaConf.create(shown.stdout).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)

    # The same plugin's local executor: each job pickled and run in a process of its own, as on SLURM nodes.
    result = run_cli("train", "-m", "hydra/launcher=submitit_local", *tiny, "trainer=cpu", "trainer.max_epochs=1",
                     "name=submitted", "optimizer.lr=1e-3,1e-2")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = sorted((workspace.runs_dir / "submitted").glob("multirun-*/*/metrics.json"))
    assert [OmegaConf.load(job.parent / "config.yaml").optimizer.lr for job in jobs] == [1e-3, 1e-2]


def test_ddp_with_fewer_held_out_rows_than_processes_is_a_config_error(workspace, reviews_snapshot, compose):
    from headsmith.errors import ConfigError
    from headsmith.training.train import train

    with pytest.raises(ConfigError, match=r"trainer.devices=3: 3 processes, but the val split has 2 rows"):
        train(compose("dataset.snapshot=reviews", *DDP, "trainer.devices=3", "dataset.val_fraction=0.01"))
