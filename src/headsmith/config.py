"""Where configs and recipes live, the recipe registry (Hydra's ConfigStore), and headsmith's OmegaConf resolvers."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from headsmith.training.selection import monitor_key
from headsmith.workspace import Workspace, workspace_root

RECIPES_ENV = "HEADSMITH_RECIPES"  # extra recipe folders, separated like PATH


def bundled(name: str) -> Path:
    """conf/, recipes/, bentofile.yaml, requirements.lock: inside an installed wheel's package, or in a checkout."""
    inside = Path(__file__).parent / name
    return inside if inside.exists() else Path(__file__).resolve().parents[2] / name


def config_dir() -> Path:
    return bundled("conf")


def recipe_dirs() -> list[Path]:
    """The bundled recipes first, then the workspace's (`headsmith tune` writes there), then a user's folders
    (HEADSMITH_RECIPES): later ones win on equal names."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]
    return [bundled("recipes"), Workspace().recipes_dir, *extra]


def register_recipes() -> dict[str, Path]:
    """Make every recipe file selectable as `recipe=NAME`. Recipes are whole experiments at the global package."""
    found = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found[path.stem] = path
    store = ConfigStore.instance()
    for name, path in found.items():
        store.store(group="recipe", name=name, node=OmegaConf.load(path), package="_global_")
    return found


def _wandb_offline() -> bool:
    return not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled")


def _sweep_job() -> tuple[str, int] | None:
    """(sweep folder name, job number) inside a job of a Hydra -m sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir).parent.name, HydraConfig.get().job.num
    return None


def _run_name(name: str) -> str:
    job = _sweep_job()
    return f"{name}-{job[1]}" if job else name


def _run_group() -> str | None:
    job = _sweep_job()
    return job[0] if job else None


def _run_stamp() -> str:
    """A run's folder name: when it started, or under torchrun its rendezvous id, so that every rank (each started
    on its own) writes into the same folder."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"torchrun-{run_id}" if run_id != "none" else datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _fast_precision() -> str:
    """bf16-mixed where the hardware computes bfloat16 natively (a GPU that supports it; a CPU with AVX512-BF16 or
    AMX: 1.8x faster fine-tuning on this project's machine, the same F1), else float32 (emulated bfloat16 is
    slower than float32; GPUs without bfloat16: 16-mixed)."""
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        flags = {word for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for word in line.split()}
    except OSError:
        flags = set()
    return "bf16-mixed" if flags & {"avx512_bf16", "amx_bf16"} else "32-true"


def register_resolvers() -> None:
    resolvers = {
        "hs.monitor": monitor_key,
        "hs.workspace": lambda: str(workspace_root()),
        "hs.wandb_offline": _wandb_offline,
        "hs.run_stamp": _run_stamp,
        "hs.run_name": _run_name,     # trackers: NAME, or NAME-JOB in a -m sweep
        "hs.run_group": _run_group,   # trackers: the sweep's folder name, runs of one sweep together
        "hs.fast_precision": _fast_precision,  # trainer.precision=${hs.fast_precision:}
    }
    for name, fn in resolvers.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)


def compose_train_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `headsmith train` would run with, outside a Hydra app (set paths.output_dir to use it)."""
    register_resolvers()
    register_recipes()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="headsmith"):
        return compose("train", overrides=overrides, return_hydra_config=return_hydra_config)
