"""Training: `train(cfg)` builds every part from the config, fits, evaluates and packages the model (its command line:
`training/command.py`)."""

from __future__ import annotations

import functools
import json
import os
import pickle
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from threadpoolctl import threadpool_limits

from headsmith.errors import ConfigError, HeadsmithError, RegressionGateFailed
from headsmith.evaluation.evaluate import REPORT_FILE, Evaluation, evaluate, score_rows
from headsmith.evaluation.metrics import flatten, mean_over_heads
from headsmith.evaluation.report import console, print_search
from headsmith.evaluation.thresholds import choose_thresholds
from headsmith.files import atomic_path, write_atomic
from headsmith.models.heads import build_head, head_spec
from headsmith.models.lora import merge_lora
from headsmith.training.module import MultiHeadClassifier
from headsmith.training.runs import set_folder
from headsmith.models.net import MultiHeadNet
from headsmith.models.package import load_model, save_package
from headsmith.models.registry import resolve_model
from headsmith.data.snapshot import load_snapshot
from headsmith.training.base_model import build_from_base, regression_gate
from headsmith.training.callbacks import EpochSeed
from headsmith.engines import RayOptions
from headsmith.training.embedding_cache import EmbeddingCache, TrunkCache, embed
from headsmith.training.selection import still_improving
from headsmith.training.solve import fit_rows, solve_heads, solve_warnings
from headsmith.training.tracking import finish_wandb, log_config, log_outputs
from headsmith.training.validate import validate_config
from headsmith.workspace import Workspace

METRICS_FILE = "metrics.json"
SEARCH_FILE = "search.csv"  # a solved run's search: every setting tried per head, its held-out score
EVAL_DIR = "eval"  # the test split's evaluation: eval.json, predictions.parquet, report.html, PNGs


def build_net(cfg: DictConfig, backbone, classes: dict[str, list[str]]) -> MultiHeadNet:
    """One head per trained head, built from the `head` group with the sizes only known now."""
    specs = {h: head_spec(OmegaConf.to_container(cfg.head, resolve=True), backbone.out_dim, len(c))
             for h, c in classes.items()}
    return MultiHeadNet(backbone, {h: build_head(spec) for h, spec in specs.items()}, classes, specs)


@rank_zero_only
def _warn_about_leakage(leakage: dict) -> None:
    for part in ("val", "test"):
        overlap = leakage[f"train_{part}_overlap"]
        if overlap["rows"]:
            console.print(f"[yellow]leakage:[/] {overlap['rows']} {part} rows have an input that is also in training "
                          f"(rows {overlap['examples']})")


def _instantiate_all(group) -> list:
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _last_checkpoint(run_dir: str) -> str:
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise HeadsmithError(f"resume={run_dir}: no checkpoint at {last} (the run stopped before its first epoch "
                             "ended, or is not a training run folder); start it again without resume=")
    try:  # tensors and plain values only: unpickling anything else could run code the file names
        torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise HeadsmithError(f"resume={run_dir}: {last} is not a plain checkpoint (tensors and values only) and is "
                             f"not loaded: {str(e).splitlines()[-1] if str(e) else type(e).__name__}") from None
    return str(last)


def _processes(trainer: DictConfig) -> int:
    """How many processes train: torchrun's WORLD_SIZE when it launched this one, else devices x num_nodes."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    devices = trainer.get("devices", 1)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or isinstance(devices, bool):
        devices = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else (
            torch.cuda.device_count() if trainer.get("accelerator") != "cpu" and torch.cuda.is_available() else 1)
    elif devices < 0:  # -1: every device
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return max(1, devices) * int(trainer.get("num_nodes", 1) or 1)


def _check_rows_per_process(trainer: DictConfig, sizes: dict[str, int]) -> None:
    """Lightning's validation and test loops give each process its own rows: every process needs at least one."""
    processes = _processes(trainer)
    short = [f"trainer.devices={trainer.get('devices')}: {processes} processes, but the {part} split has {rows} "
             f"row{'s' if rows != 1 else ''}; use fewer devices, or more {part} rows (a larger "
             f"dataset.{part}_fraction{', or dataset.test_snapshot' if part == 'test' else ''})"
             for part, rows in sizes.items() if part != "train" and rows < processes]
    if short:
        raise ConfigError(short)


def _set_csv_history_aside(trainer: pl.Trainer) -> dict[Path, Path]:
    """Lightning's CSV logger starts its file afresh: keep what a resumed run logged before it stopped. When an
    earlier resume was killed before it could merge, its rows join the history set aside first."""
    aside = {}
    for logger in trainer.loggers:
        if not isinstance(logger, pl.loggers.CSVLogger):
            continue
        current = Path(logger.log_dir) / "metrics.csv"
        before = current.with_name("metrics.before-resume.csv")
        if before.is_file() and current.is_file():
            _merge_history(before, current, into=before)
            current.unlink()
        elif current.is_file():
            current.rename(before)
        if before.is_file():
            aside[current] = before
    return aside


def _merge_history(older: Path, newer: Path, into: Path) -> None:
    """The rows of `older` before the first epoch of `newer`, then `newer`'s, written atomically to `into` (a run
    killed before it logged a row leaves `newer` empty: then `older` whole)."""
    old, new = _read_history(older), _read_history(newer)
    if "epoch" not in new or new.empty:
        kept = old
    elif "epoch" not in old:
        kept = new
    else:
        kept = pd.concat([old[old["epoch"] < new["epoch"].min()], new])
    with atomic_path(into) as tmp:
        kept.to_csv(tmp, index=False)


def _read_history(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # created, nothing written yet
        return pd.DataFrame()


def _restore_csv_history(aside: dict[Path, Path]) -> None:
    """One metrics.csv again: the rows before the epoch the resumed run started with, then the resumed run's."""
    for current, before in aside.items():
        if current.is_file():
            _merge_history(before, current, into=current)
        else:
            before.rename(current)
        before.unlink(missing_ok=True)


def train(cfg: DictConfig, extra_callbacks: list[pl.Callback] = (), checked: bool = False) -> tuple[dict, dict]:
    """Fit, evaluate and package the model `cfg` describes; `extra_callbacks` join the config's own (a sweep's
    pruning, for one). `checked`: the caller ran `validate_config` on this cfg already (the command line does,
    before it imports this module)."""
    try:
        result = _train(cfg, extra_callbacks, checked)
    except BaseException:
        finish_wandb(failed=True)
        raise
    finish_wandb(failed=False)
    return result


def _fit_by_training(cfg: DictConfig, net: MultiHeadNet, base: MultiHeadNet | None, kept: list[str], datamodule,
                     resume_from: str | None, extra_callbacks) -> tuple[pl.Trainer, MultiHeadClassifier, dict]:
    """Lightning's loop: epochs, the selection rule's best checkpoint, early stopping; then the best checkpoint
    validated and tested (every rank's rows under DDP)."""
    # Kept heads can only drift when the backbone trains: then the base model teaches them (distillation).
    teacher = base if kept and not net.backbone_frozen and cfg.distillation.weight > 0 else None
    # Under DDP, epoch-level values come from torchmetrics (computed over every rank's rows) or are held-out losses
    # logged with sync_dist; the training loss shown is rank 0's. Lightning's advice to sync them does not apply.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True")
    model = MultiHeadClassifier(
        net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_weights=datamodule.class_weights() if cfg.class_weights == "balanced" else None,
        teacher=teacher, kept_heads=kept, distillation=cfg.distillation,
    )
    callbacks = [*_instantiate_all(cfg.get("callbacks")), EpochSeed(cfg.seed), *extra_callbacks]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks,
                                      logger=_instantiate_all(cfg.get("logger")) or False,
                                      default_root_dir=cfg.paths.output_dir)
    csv_history = _set_csv_history_aside(trainer) if resume_from and trainer.is_global_zero else {}
    log_config(trainer.loggers, cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    # Evaluate the checkpoint the selection rule picked (or the last weights when checkpointing is switched off).
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    return trainer, model, csv_history


def _trunk_cut(net: MultiHeadNet, kept: list[str]) -> int | None:
    """Where a cached trunk can enter the network for every head a training step computes: the trained heads'
    branch, or the backbone's first trainable block; None when some head would need another cut."""
    trained = [h for h in net.classes if h not in kept]
    own = {net.branch_of.get(h) for h in trained}
    if len(own) != 1:
        return None
    cut = net.branch(own.pop()).cut if None not in own else net.backbone.first_trainable_block()
    distilled = [] if net.backbone_frozen else kept  # kept heads run only when the base model teaches them
    return cut if all(net.branch(net.branch_of[h]).cut == cut for h in distilled if h in net.branch_of) else None


def _solve(cfg: DictConfig, net: MultiHeadNet, plan: dict[str, str], datamodule, features: torch.Tensor,
           output_dir: Path) -> tuple[Evaluation, dict, dict]:
    """Every trained head solved on the frozen backbone's embeddings, its setting chosen by cross-validation (see
    solve.py). Returns the held-out evaluation (validation: out-of-fold predictions), the selection block and the
    fit's report (chosen settings, the search's table, convergence), also written to search.csv and printed."""
    started = time.monotonic()
    rows = fit_rows(datamodule.splits)
    # numpy's and scipy's OpenBLAS each keep a thread pool; on these small products they spin against each other
    # (5x slower on 2 cores). One BLAS thread per fold, the folds side by side (solve.py), is the fast setting.
    with threadpool_limits(1, user_api="blas"):
        solutions, held = solve_heads(net, plan, rows, features, cfg.fit,
                                      OmegaConf.to_container(cfg.head, resolve=True), cfg.selection,
                                      balanced=cfg.class_weights == "balanced", seed=cfg.seed)
    scores = score_rows(net, datamodule.snapshot, held, features if net.reads_embeddings else None)
    for head, solution in solutions.items():  # each head's answers on the rows it was not fit on
        scores[head][solution.held_out_rows] = solution.held_out
    val = Evaluation(net, datamodule.snapshot, held, scores, model={}, split="val")
    judged = [s.score for h, s in solutions.items() if cfg.selection.head in (None, h)]
    selection = {"monitor": cfg.selection.monitor, "mode": cfg.selection.mode,
                 "best_score": sum(judged) / len(judged), "best_epoch": None, "checkpoint": None,
                 "chosen": {h: str(s.chosen) for h, s in solutions.items()}}
    folds = int(cfg.fit.folds)
    fit = {"method": "solve", "folds": folds,
           "held_out": (f"out-of-fold predictions, {folds}-fold cross-validation over the non-test rows" if folds
                        else "the validation split"),
           "seconds": round(time.monotonic() - started, 2),
           "heads": {h: s.summary() for h, s in solutions.items()}, "warnings": solve_warnings(solutions, cfg.fit)}
    pd.DataFrame([{"head_name": h, **row} for h, s in solutions.items() for row in s.table]).to_csv(
        output_dir / SEARCH_FILE, index=False)
    print_search(fit, cfg.selection.monitor)
    return val, selection, fit


def _train(cfg: DictConfig, extra_callbacks: list[pl.Callback], checked: bool) -> tuple[dict, dict]:
    resume_from = _last_checkpoint(cfg.resume) if cfg.get("resume") else None  # before any weight is loaded
    workspace = Workspace(cfg.paths.workspace)
    if not checked:
        validate_config(cfg, workspace)  # every config mistake, before any weight is loaded
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_folder(output_dir)
    if rank_zero_only.rank == 0:  # under DDP every rank runs this function; files are written once
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    base = load_model(resolve_model(workspace, cfg.base_model)) if cfg.get("base_model") else None
    backbone = base.backbone if base else instantiate(cfg.backbone)
    datamodule = instantiate(cfg.dataset, workspace=workspace, preprocess=backbone.preprocess)
    leakage = datamodule.leakage()
    _warn_about_leakage(leakage)
    if base:
        net, plan = build_from_base(cfg, base, datamodule.classes)
    else:
        net, plan = build_net(cfg, backbone, datamodule.classes), {h: "new" for h in datamodule.classes}
    kept = [h for h, action in plan.items() if action == "keep"]
    # Trained heads on the frozen shared backbone learn from its embeddings, whatever branches kept heads read.
    on_embeddings = net.backbone_frozen and not any(h in net.branch_of for h in plan if h not in kept)
    solved = on_embeddings and cfg.fit.method == "solve"
    if not solved:
        _check_rows_per_process(cfg.trainer, datamodule.split_sizes())

    embeddings_of = None  # the frozen backbone's embeddings of all a snapshot's rows
    if on_embeddings and cfg.embedding_cache:
        cache = EmbeddingCache(workspace, RayOptions.from_config(cfg.get("ray")))
        embeddings_of = functools.partial(cache.features, backbone=net.backbone)
    elif solved:  # a solve needs every row's embedding at once: computed here, kept in memory only
        embeddings_of = functools.cache(lambda snapshot: embed(net.backbone, snapshot.frame()["input"].tolist(),
                                                               load=snapshot.load_inputs))

    def features_of(snapshot):  # embeddings that stand in for the backbone for every head, if there are
        return embeddings_of(snapshot) if embeddings_of and net.reads_embeddings else None

    if cfg.backbone.mode != "full":
        # Frozen parts stay in eval mode on purpose (no dropout): Lightning's warning about them is expected.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    parts = {"net": net, "datamodule": datamodule}
    csv_history = {}
    if solved:
        if rank_zero_only.rank != 0:
            return {}, parts  # torchrun's other ranks: a solved head is fit once, on rank 0
        loggers = _instantiate_all(cfg.get("logger"))
        log_config(loggers, cfg)
        val, selection, fit = _solve(cfg, net, plan, datamodule, embeddings_of(datamodule.snapshot), output_dir)
        logged = mean_over_heads("val", val.metrics)
        for head, summary in val.metrics.items():
            logged.update(flatten("val", head, summary))
        for logger in loggers:
            logger.log_metrics(logged, step=0)
            logger.save()
        epochs_trained = None
    else:
        if on_embeddings and cfg.embedding_cache:
            datamodule.use_features(embeddings_of)
        elif cfg.embedding_cache and cfg.backbone.mode in ("partial", "lora"):
            cut = _trunk_cut(net, kept)
            if cut is not None:
                datamodule.use_trunk(functools.partial(TrunkCache(workspace).states, backbone=net.backbone, cut=cut))
        trainer, model, csv_history = _fit_by_training(cfg, net, base, kept, datamodule, resume_from, extra_callbacks)
        merge_lora(net)  # the adapters folded into plain weights: what is evaluated is what is packaged
        parts.update(trainer=trainer, model=model)
        if not trainer.is_global_zero:
            return {}, parts  # the other DDP ranks are done: what follows runs once, on rank 0
        loggers = trainer.loggers
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        selection = {
            "monitor": cfg.selection.monitor,
            "mode": cfg.selection.mode,
            "best_score": float(trainer.checkpoint_callback.best_model_score) if best else None,
            "best_epoch": torch.load(best, map_location="cpu", weights_only=True)["epoch"] if best else None,
            "checkpoint": best or None,
        }
        fit = {"method": "train", "warnings": still_improving(trainer, selection)}
        epochs_trained = trainer.current_epoch
        val = evaluate(net, datamodule.snapshot, datamodule.splits["val"], features_of(datamodule.snapshot),
                       split="val")

    # Thresholds by policy on held-out predictions (kept heads keep the base model's); then the test evaluation.
    net.thresholds = {**{h: base.thresholds[h] for h in kept if h in base.thresholds},
                      **choose_thresholds(val, cfg.thresholds, [h for h, a in plan.items() if a != "keep"])}
    test_snapshot = datamodule.test_snapshot or datamodule.snapshot
    test = evaluate(net, test_snapshot, datamodule.splits["test"], features_of(test_snapshot),
                    model={"name": cfg.name, "path": str(output_dir / "model")}, split="test")


    snapshots = {"train": datamodule.snapshot.manifest.ref(),
                 "test": datamodule.test_snapshot.manifest.ref() if datamodule.test_snapshot else None}
    metrics = {
        "name": cfg.name,
        "selection": selection,
        "fit": fit,
        "epochs_trained": epochs_trained,
        "splits": datamodule.split_sizes(),
        "leakage": leakage,
        "val": val.metrics,
        "test": test.metrics,
        "thresholds": net.thresholds,
        "report": str(output_dir / EVAL_DIR / REPORT_FILE),
        "heads": plan,
        "agreement_with_base": parts["model"].agreement if "model" in parts else {},
    }
    lineage = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "snapshots": snapshots,
        "base_model": {"ref": cfg.base_model, "heads": metrics["heads"],
                       "lineage": base.meta["lineage"]} if base else None,
        "recipe": OmegaConf.to_container(cfg, resolve=True),
        "metrics": {"val": metrics["val"], "test": metrics["test"], "selection": metrics["selection"]},
    }
    if base and cfg.regression_gate.golden:
        golden = [load_snapshot(workspace, name) for name in cfg.regression_gate.golden]
        metrics["regression_gate"] = regression_gate(base, net, golden, kept, cfg.regression_gate.max_f1_drop,
                                                     features_of)  # a frozen backbone is the base's: same embeddings
        lineage["regression_gate"] = metrics["regression_gate"]
    _restore_csv_history(csv_history)
    with ThreadPoolExecutor(max_workers=1) as pool:  # safetensors writes the weights without holding the GIL,
        writing = pool.submit(save_package, net, output_dir / "model", lineage)  # while the report's plots are drawn
        test.save(output_dir / EVAL_DIR)
        package = writing.result()
    metrics["model"] = str(package)
    write_atomic(output_dir / METRICS_FILE, json.dumps(metrics, indent=2))
    log_outputs(loggers, cfg.name, output_dir, output_dir / EVAL_DIR, package, metrics)
    gate = metrics.get("regression_gate")
    if gate and not gate["passed"]:
        raise RegressionGateFailed(gate["failures"], output_dir)
    return metrics, {**parts, "package": package}


if __name__ == "__main__":  # `python -m headsmith.training.train ...`, as earlier versions documented it
    from headsmith.training.command import main

    main()
