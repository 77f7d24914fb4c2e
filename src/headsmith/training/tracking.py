"""Experiment tracking beyond Lightning's metric logging: the run's config, and what it produced (the report and
the model package) as W&B artifacts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from headsmith.evaluation.metrics import flatten


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """The whole config in each W&B run. (Not the CSV logger's hparams.yaml: it rewrites that file every time it
    flushes, every step; the run folder's config.yaml has it already.)"""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def log_outputs(loggers: list[Logger], name: str, run_dir: Path, eval_dir: Path, package: Path,
                metrics: dict) -> None:
    """For each W&B logger: test metrics in the run summary, the plots as images, and two artifacts:
    `NAME-report` (report.html, eval.json, predictions, PNGs, metrics.json) and `NAME-model` (the package)."""
    import wandb

    slug = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        run.summary.update({k: v for head, s in metrics["test"].items() for k, v in flatten("test", head, s).items()})
        run.log({f"eval/{png.stem}": wandb.Image(str(png)) for png in sorted(eval_dir.glob("*.png"))})
        # The run folder's files are final: W&B refers to them (immutable) rather than copying them, so an offline
        # run does not duplicate its model package in ~/.local/share/wandb; `wandb sync` reads them in place.
        report = wandb.Artifact(f"{slug}-report", type="evaluation", metadata={"split": "test"})
        report.add_dir(str(eval_dir), policy="immutable")
        report.add_file(str(run_dir / "metrics.json"), policy="immutable")
        run.log_artifact(report)
        model = wandb.Artifact(f"{slug}-model", type="model",
                               metadata={"heads": metrics["heads"], "selection": metrics["selection"]})
        model.add_dir(str(package), policy="immutable")
        run.log_artifact(model)


def finish_wandb(failed: bool) -> None:
    """Close the W&B run this process opened, so the next run in it (a tune trial) gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
