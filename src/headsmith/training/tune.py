"""Bayesian hyperparameter search. Each Optuna trial is one `train` run, composed through Hydra's compose API from
the recipe, the fixed overrides and the trial's values; the selection rule's best score is the objective, and a
trial whose validation curve falls behind the others is stopped (pruned) by a Lightning callback."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from headsmith.config import compose_train_config, config_dir
from headsmith.errors import ConfigError, HeadsmithError
from headsmith.evaluation.plots import save_tune_png
from headsmith.evaluation.report import console
from headsmith.files import atomic_path, write_atomic
from headsmith.training.runs import set_folder
from headsmith.training.validate import target_problems, validate_config
from headsmith.workspace import Workspace

TRIALS_FILE = "trials.csv"
BEST_RECIPE = "best.yaml"
PLOT_FILE = "tune.png"


def distribution(key: str, expression: str) -> optuna.distributions.BaseDistribution:
    """Hydra's sweep syntax, read as hydra-optuna-sweeper reads it: choice(a, b, ...), range(start, stop[, step])
    (integers, stop excluded), interval(low, high) (floats), tag(log, ...) for a log scale."""
    try:
        sweep = OverridesParser.create().parse_override(f"{key}={expression}").value()
    except HydraException as e:
        raise HeadsmithError(f"{key}={expression}: not a sweep expression ({e})") from None
    if isinstance(sweep, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(sweep.list)
    log = "log" in getattr(sweep, "tags", ())
    if isinstance(sweep, IntervalSweep):
        if log and sweep.start <= 0:
            raise HeadsmithError(f"{key}={expression}: a log scale needs a positive low end")
        return optuna.distributions.FloatDistribution(sweep.start, sweep.end, log=log)
    if isinstance(sweep, RangeSweep) and all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        if log and sweep.step != 1:
            raise HeadsmithError(f"{key}={expression}: a log-scale range takes no step")
        high = sweep.start + (sweep.stop - 1 - sweep.start) // sweep.step * sweep.step
        return optuna.distributions.IntDistribution(sweep.start, high, step=sweep.step, log=log)
    raise HeadsmithError(f"{key}={expression}: use choice(...), range(start, stop[, step]) of integers, "
                         "interval(low, high) or tag(log, ...) of one of them")


def suggest(trial: optuna.Trial, key: str, d: optuna.distributions.BaseDistribution):
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, log=d.log)


def split_overrides(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Fixed overrides (recipe=..., key=value) and sweep expressions (key=choice(...), interval(...) ...)."""
    fixed, sweeps = [], {}
    for arg in args:
        try:
            is_sweep = OverridesParser.create().parse_override(arg).is_sweep_override()
        except HydraException as e:
            raise HeadsmithError(f"{arg}: {e}") from None
        if is_sweep:
            key, expression = arg.split("=", 1)
            sweeps[key] = expression
        else:
            fixed.append(arg)
    return fixed, sweeps


def override(key: str, value) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    return f"{key}={value}"


class Tuner:
    """One study: `headsmith tune [recipe=NAME] [key=value ...] [key=SWEEP ...]`, writing into one folder."""

    def __init__(self, args: list[str], workspace: Workspace | None = None):
        self.workspace = workspace or Workspace()
        self.fixed, sweeps = split_overrides(args)
        self.base = self._compose([])
        self.settings = self.base.tune
        expressions = {**OmegaConf.to_container(self.settings.params, resolve=True), **sweeps}
        if not expressions:
            raise HeadsmithError("nothing to tune: give sweep expressions, e.g. 'optimizer.lr=tag(log, "
                                 "interval(1e-4, 1e-1))' 'head.hidden=choice(64, 128, 256)', or tune.params in "
                                 "the recipe")
        self.space = {key: distribution(key, str(e)) for key, e in expressions.items()}
        problems = [p for key in ("sampler", "pruner") for p in target_problems(f"tune.{key}", self.settings[key])]
        if not isinstance(self.settings.trials, int) or self.settings.trials < 1:
            problems.append(f"tune.trials={self.settings.trials}: a positive number of trials")
        if self.settings.keep_models not in ("best", "all"):
            problems.append(f"tune.keep_models={self.settings.keep_models}: choose best or all")
        if problems:
            raise ConfigError(problems)
        self.folder = Path(self.base.paths.runs) / self.base.name / f"tune-{datetime.now():%Y%m%d-%H%M%S}"
        self.monitor = self.base.selection.monitor
        self.direction = "maximize" if self.base.selection.mode == "max" else "minimize"
        # Every key of the space must compose and validate before hours go into trials.
        sample = self._overrides(self._sample_point())
        self.checked = self._compose([*sample, f"paths.output_dir={self.trial_dir(0)}"])
        validate_config(self.checked, self.workspace)

    def _compose(self, extra: list[str], **kwargs) -> DictConfig:
        try:
            return compose_train_config([*self.fixed, *extra], **kwargs)
        except HydraException as e:
            raise HeadsmithError(f"the config does not compose: {e}") from None

    def _sample_point(self) -> dict:
        def first(d):
            return d.choices[0] if isinstance(d, optuna.distributions.CategoricalDistribution) else d.low
        return {key: first(d) for key, d in self.space.items()}

    def _overrides(self, params: dict) -> list[str]:
        return [override(key, value) for key, value in params.items()]

    @staticmethod
    def _shown(params: dict) -> str:
        return " ".join(override(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in params.items())

    def trial_dir(self, number: int) -> Path:
        return self.folder / f"trial-{number:03d}"

    def _objective(self, trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, d) for key, d in self.space.items()}
        trial.set_user_attr("overrides", self._overrides(params))
        tracking = ([f"logger.wandb.name={self.base.name}-trial-{trial.number:03d}",
                     f"logger.wandb.group={self.folder.name}"] if "wandb" in (self.base.logger or {}) else [])
        cfg = self._compose([*self._overrides(params), f"paths.output_dir={self.trial_dir(trial.number)}",
                             *tracking])
        from headsmith.training.callbacks import OptunaPruning  # Lightning: imported once a trial starts
        from headsmith.training.train import train

        started = time.monotonic()
        try:
            metrics, _ = train(cfg, extra_callbacks=[OptunaPruning(trial, self.monitor)])
        except HeadsmithError as e:
            trial.set_user_attr("error", str(e).splitlines()[0])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        trial.set_user_attr("best_epoch", metrics["selection"]["best_epoch"])
        if metrics["selection"]["best_score"] is None:
            raise HeadsmithError("tune needs the model_checkpoint callback: it scores each trial")
        return metrics["selection"]["best_score"]

    def _report(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """One line per finished trial, and the summary written again (a stopped study keeps what it did)."""
        outcome = {"COMPLETE": f"{self.monitor} {trial.value:.4f}",
                   "PRUNED": f"pruned after epoch {trial.user_attrs.get('pruned_at_epoch')}",
                   "FAIL": f"failed: {trial.user_attrs.get('error', 'see the log above')}"}[trial.state.name]
        best = f" (best {study.best_value:.4f}, trial {study.best_trial.number})" if _completed(study) else ""
        console.print(f"trial {trial.number} ({trial.number + 1}/{self.settings.trials})  {self._shown(trial.params)}"
                      f"  -> {outcome}{best}", highlight=False)
        with atomic_path(self.folder / TRIALS_FILE) as tmp:
            self.summary(study).to_csv(tmp, index=False)

    def summary(self, study: optuna.Study) -> pd.DataFrame:
        rows = []
        for t in study.trials:
            if t.state.is_finished():
                rows.append({"trial": t.number, "state": t.state.name.lower(),
                             "overrides": self._shown(t.params),
                             "objective": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                             "epochs": t.last_step + 1 if t.last_step is not None else None,
                             "best_epoch": t.user_attrs.get("best_epoch"), "seconds": t.user_attrs.get("seconds"),
                             "run": str(self.trial_dir(t.number)), **{k: t.params.get(k) for k in self.space}})
        return pd.DataFrame(rows)

    def run(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        set_folder(self.folder)  # the study's, before any trial's
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial of our own instead
        study = optuna.create_study(direction=self.direction, sampler=instantiate(self.settings.sampler),
                                    pruner=instantiate(self.settings.pruner), study_name=self.folder.name,
                                    storage=f"sqlite:///{self.folder / 'study.db'}")
        console.print(f"tuning {', '.join(self.space)} over {self.settings.trials} trials, objective {self.monitor} "
                      f"({self.direction}); runs in {self.folder}", highlight=False)
        study.optimize(self._objective, n_trials=self.settings.trials, catch=(HeadsmithError,),
                       callbacks=[self._report])
        summary = self.summary(study)  # trials.csv is written after every trial (_report)
        save_tune_png(summary, self.monitor, self.direction == "maximize", self.folder / PLOT_FILE)
        if not _completed(study):
            raise HeadsmithError(f"no trial completed: see {self.folder / TRIALS_FILE}")
        best = study.best_trial
        recipe = self.write_best_recipe(best)
        if self.settings.keep_models == "best":
            for t in study.trials:
                if t.number != best.number:
                    shutil.rmtree(self.trial_dir(t.number) / "model", ignore_errors=True)
        print_summary(summary, best.number, self.monitor)
        console.print(f"best: trial {best.number}, {self.monitor} {best.value:.4f}; recipe {recipe} "
                      f"(headsmith train recipe={recipe.stem}); summary {self.folder / TRIALS_FILE}", highlight=False)
        return {"folder": self.folder, "best_trial": best.number, "best_value": best.value,
                "best_overrides": best.user_attrs["overrides"], "recipe": recipe, "summary": summary,
                "pruned": int((summary["state"] == "pruned").sum())}

    def write_best_recipe(self, best: optuna.trial.FrozenTrial) -> Path:
        """The best trial as a whole experiment: every group it chose and every value, so it reproduces the trial
        whatever recipes it started from become later. Saved beside the trials and as a workspace recipe."""
        name = f"{self.base.name}-tuned"
        cfg = self._compose([*best.user_attrs["overrides"], f"name={name}"], return_hydra_config=True)
        defaults_file = OmegaConf.load(config_dir() / "train.yaml").defaults
        primary = {k: v for entry in defaults_file if isinstance(entry, DictConfig) for k, v in entry.items()}
        choices = {g: c for g, c in cfg.hydra.runtime.choices.items()
                   if g in primary and g not in ("recipe", "debug", "paths") and c != primary[g]}
        body = OmegaConf.to_container(cfg, resolve=False)
        for key in ("hydra", "paths", "tune"):
            body.pop(key, None)
        header = (f"# @package _global_\n# Trial {best.number} of `headsmith tune {' '.join(self.fixed)}`, the best by "
                  f"{self.monitor} ({best.value:.4f}).\n# Tuned: {' '.join(best.user_attrs['overrides'])}\n"
                  f"# Trials: {self.folder}\n# Run it: headsmith train recipe={name}\n")
        defaults = {"defaults": [{f"override /{g}": c} for g, c in choices.items()] + ["_self_"]}
        text = header + OmegaConf.to_yaml(OmegaConf.create(defaults)) + OmegaConf.to_yaml(OmegaConf.create(body))
        write_atomic(self.folder / BEST_RECIPE, text)
        recipes = self.workspace.recipes_dir
        recipes.mkdir(parents=True, exist_ok=True)
        target = recipes / f"{name}.yaml"
        return write_atomic(target, text)  # a recipe is whole or absent


def _completed(study: optuna.Study) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def print_summary(summary: pd.DataFrame, best: int, monitor: str) -> None:
    table = Table(title=f"trials ({monitor})", title_justify="left")
    for column in ("trial", "state", "overrides", "objective", "epochs"):
        table.add_column(column, justify="right" if column in ("trial", "objective", "epochs") else "left")
    for row in summary.itertuples():
        objective = "" if pd.isna(row.objective) else f"{row.objective:.4f}"
        style = "bold green" if row.trial == best else ("dim" if row.state != "complete" else None)
        table.add_row(str(row.trial), row.state, row.overrides, objective,
                      "" if pd.isna(row.epochs) else str(int(row.epochs)), style=style)
    console.print(table)


def main(args: list[str]) -> dict:
    return Tuner(args).run()
