"""`headsmith train`'s command line: Hydra's entry, `resume=`, and one job as each launcher runs it. Lightning and
the training code are imported only once a job's config has passed its checks, so a mistake is reported in seconds
(also `python -m headsmith.training.command ...`, as torchrun starts every rank)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, read_write

from headsmith.config import config_dir, register_recipes, register_resolvers
from headsmith.errors import HeadsmithError
from headsmith.evaluation.report import print_error, print_metrics
from headsmith.workspace import Workspace

_COMMAND: list[str] = []  # how this process was started: `headsmith train` (the CLI) or python -m this module


def _ranks_rerun_this_job() -> None:
    """Lightning starts DDP's other ranks by running sys.argv again with hydra.run.dir=<HydraConfig's run.dir>.
    Make that this one job (in a -m sweep: not the whole sweep again) in this job's own folder."""
    from hydra.core.hydra_config import HydraConfig

    if not _COMMAND:  # a job a launcher runs in another process (submitit): its ranks come from the cluster
        return
    job = HydraConfig.get()
    sys.argv = [*_COMMAND, *job.overrides.task]
    with read_write(job):
        job.run.dir = job.runtime.output_dir


def _leave_distributed(environment: dict[str, str]) -> None:
    """Lightning's DDP launcher leaves its process group and its rank variables behind: the next job of a -m sweep
    in this process must start its own ranks."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


def run_job(cfg: DictConfig) -> float | None:
    """One training job, as Hydra's launchers run it: here, or pickled to another process or a SLURM node (so it
    is a plain module-level function, importable by name)."""
    from headsmith.training.validate import validate_config

    _ranks_rerun_this_job()
    environment = dict(os.environ)
    try:
        validate_config(cfg, Workspace(cfg.paths.workspace))  # before Lightning is imported: mistakes in seconds
        from headsmith.training.train import train

        metrics, _ = train(cfg, checked=True)
    except HeadsmithError as e:
        print_error(str(e))
        raise SystemExit(2) from None
    finally:
        _leave_distributed(environment)
    if not metrics:  # a DDP rank other than 0
        return None
    print_metrics(metrics)
    return metrics["selection"]["best_score"]  # what a Hydra sweeper optimizes


_hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(run_job)


def resume_overrides(args: list[str]) -> list[str]:
    """`resume=RUN_DIR [key=value ...]`: the run's own overrides again, in its own folder, then any given now (a
    larger trainer.max_epochs, say)."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise HeadsmithError("resume= continues one run: drop -m")
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise HeadsmithError(f"resume={run_dir}: not a training run folder (no {saved})")
    before = [o for o in OmegaConf.load(saved) if not o.startswith("resume=")]
    now = [a for a in args if not a.startswith("resume=")]
    return [*before, *now, f"resume={run_dir}", f'hydra.run.dir="{run_dir}"']


def main(argv: list[str] | None = None) -> None:
    """`headsmith train [recipe=NAME] [key=value ...] [-m]`: Hydra's own command line, recipes registered first."""
    register_resolvers()
    register_recipes()
    _COMMAND[:] = [sys.argv[0]]
    if argv is not None:
        _COMMAND.append("train")  # sys.argv[0] is the `headsmith` script
        argv = resume_overrides(argv)
        # Hydra's parser takes overrides on one side of -m only; accept them on both, as users write them.
        sweep = [a for a in argv if a in ("-m", "--multirun")]
        sys.argv = ["headsmith train", *sweep, *(a for a in argv if a not in sweep)]
    _hydra_main()


if __name__ == "__main__":
    main()
