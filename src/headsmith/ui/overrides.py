"""What a browser may set on a run. Overrides are parsed by Hydra's own parser and judged by their parsed values,
never by their text (`$\\{x\\}` is `${x}` once parsed); keys come from an allow-list of what a run form needs; then the
whole request is composed and validated exactly as `headsmith train` or `tune` would before anything is queued, and
every `_target_` in the result must be one that headsmith's own configs or recipes name. The command line keeps its
full power: it is the user's own shell."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, OverrideType, RangeSweep
from omegaconf import OmegaConf

from headsmith.config import compose_train_config, config_dir, recipe_dirs, register_recipes
from headsmith.errors import ConfigError, HeadsmithError
from headsmith.workspace import Workspace

# Whole keys (fnmatch patterns) a run form may set: data, backbone mode and blocks, head, fit, optimizer, scheduler,
# trainer limits, early stopping, selection, thresholds, base model and heads, tune's trials and search space.
# Not: where files go (paths, hydra, resume, callbacks' folders), loggers, Ray, tune's sampler and pruner.
ALLOWED_KEYS = (
    "recipe", "name", "seed", "class_weights", "embedding_cache", "branch", "base_model", "heads", "heads.*",
    "dataset", "dataset.snapshot", "dataset.test_snapshot", "dataset.heads", "dataset.val_fraction",
    "dataset.test_fraction", "dataset.batch_size",
    "backbone", "backbone.pretrained", "backbone.mode", "backbone.trainable_blocks", "backbone.max_tokens",
    "backbone.image_size", "backbone.lora.rank", "backbone.lora.alpha", "backbone.lora.dropout",
    "backbone.lora.targets",
    "head", "head.*", "fit", "fit.*", "optimizer", "optimizer.*", "scheduler", "scheduler.*", "selection",
    "selection.metric", "selection.head", "selection.class_label", "selection.mode", "thresholds.*",
    "trainer", "trainer.max_epochs", "trainer.min_epochs", "trainer.max_steps", "trainer.limit_train_batches",
    "trainer.limit_val_batches", "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.precision",
    "trainer.accelerator", "callbacks.early_stopping.patience", "callbacks.early_stopping.min_delta",
    "distillation.weight", "distillation.temperature", "regression_gate.golden", "regression_gate.max_f1_drop",
    "tune.trials", "tune.keep_models", "tune.params.*",
)
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MODEL_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(:[0-9]{1,9})?")
NAMED_BY_NAME = {"name": PLAIN_NAME, "base_model": MODEL_REF, "dataset.snapshot": PLAIN_NAME,
                 "dataset.test_snapshot": PLAIN_NAME, "regression_gate.golden": PLAIN_NAME}


def group_options() -> dict[str, list[str]]:
    """Each config group (conf/GROUP/*.yaml, and `recipe`) with its options."""
    options = {folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
               for folder in config_dir().iterdir() if folder.is_dir() and folder.name != "hydra"}
    return {**options, "recipe": sorted(register_recipes())}


def _leaves(value) -> list:
    """Every plain value inside a parsed override value: each choice of a sweep, each bound of a range or interval,
    each key and item of a dict or list (a glob is its own kind: refused by the caller)."""
    if isinstance(value, ChoiceSweep):
        return [leaf for item in value.list for leaf in _leaves(item)]
    if isinstance(value, RangeSweep):
        return [value.start, value.stop, value.step]
    if isinstance(value, IntervalSweep):
        return [value.start, value.end]
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in (*_leaves(k), *_leaves(v))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _keys(value) -> list[str]:
    """Every dict key inside a parsed value (choices, lists and dicts, at any depth)."""
    if isinstance(value, ChoiceSweep):
        return [k for item in value.list for k in _keys(item)]
    if isinstance(value, dict):
        return [str(k) for k in value] + [k for v in value.values() for k in _keys(v)]
    return [k for item in value for k in _keys(item)] if isinstance(value, list) else []


def _choices(value) -> list:
    return list(value.list) if isinstance(value, ChoiceSweep) else [value]


def interpolates(text: str) -> bool:
    """`${` in any spelling: OmegaConf's escapes (`\\${`) and Hydra's (`$\\{`) both become one in a later parse."""
    return "${" in text.replace("\\", "")


def _outside(path: str, allowed: list[Path]) -> bool:
    if not (path.startswith(("/", "~")) or ".." in Path(path).parts):
        return False
    return not any(Path(path).expanduser().resolve().is_relative_to(folder) for folder in allowed)


def override_problems(overrides: list[str], kind: str, workspace: Workspace, allowed: list[Path]) -> dict[str, list]:
    """What is wrong with each override (by its text; "" for the request as a whole): the rules of this module, then
    the CLI's own composition and `validate_config` (for tune: the study's own checks of its search space, and one
    point of it composed and validated), then every `_target_` of the composed config."""
    problems: dict[str, list[str]] = {}
    keys: dict[str, str] = {}
    options = group_options()
    for text in overrides:
        found = problems.setdefault(text, [])
        found += _one(text, kind, workspace, allowed, options, keys)
    if any(problems.values()):
        return {k: v for k, v in problems.items() if v}
    try:
        cfg = _composed(overrides, kind, workspace)
        if foreign := sorted(set(targets(cfg)) - known_targets()):
            problems.setdefault("", []).append(f"the composed config builds {', '.join(foreign)}: no headsmith config "
                                               "or recipe names it")
    except ConfigError as e:
        for problem in e.problems:
            owner = max((k for k in keys if problem.startswith(k)), key=len, default=None)
            problems.setdefault(keys[owner] if owner else "", []).append(problem)
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors name the key; said back as they are
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        owner = next((k for k in sorted(keys, key=len, reverse=True) if k in str(e)), None)
        problems.setdefault(keys[owner] if owner else "", []).append(message)
    return {k: v for k, v in problems.items() if v}


def _one(text: str, kind: str, workspace: Workspace, allowed: list[Path], options: dict, keys: dict) -> list[str]:
    """The problems of one override, judged by what Hydra's parser makes of it."""
    try:
        override = OverridesParser.create().parse_override(text)
    except Exception as e:  # noqa: BLE001 - Hydra's grammar errors: the person's text, said back to them
        return [f"cannot be read: {str(e).splitlines()[0]}"]
    key, value = override.key_or_group, override.value()
    keys[key] = text
    if override.type != OverrideType.CHANGE or override.package:
        return ["only KEY=VALUE here: no +, ++, ~ or @package"]
    if any(part.startswith("_") for part in key.split(".")) or any(k.startswith("_") for k in _keys(value)):
        return ["_target_ and other _keys_ are set by recipes, not from the browser"]
    if not any(fnmatchcase(key, pattern) for pattern in ALLOWED_KEYS):
        roots = ", ".join(sorted({pattern.split(".")[0] for pattern in ALLOWED_KEYS}))
        return [f"{key} is not set from the browser (it sets keys of {roots}; the command line sets anything)"]
    leaves = _leaves(value)
    if any(isinstance(leaf, str) and interpolates(leaf) for leaf in leaves):  # dict keys are leaves too
        return ["interpolations (${...}, in any spelling) are not taken from the browser"]
    if isinstance(value, Glob) or any(isinstance(leaf, Glob) for leaf in leaves):
        return ["glob(...) sweeps: name the choices with choice(...)"]
    found = []
    if override.is_sweep_override() and kind == "train":
        found.append("a sweep: start a tune study instead")
    if key.startswith("tune.params."):
        return found + _search_space(key.removeprefix("tune.params."), value, kind, workspace, allowed, options)
    for path in [leaf for leaf in leaves if isinstance(leaf, str) and _outside(leaf, allowed)]:
        found.append(f"{path}: only paths in the workspace or the data folder")
    if key in options:
        for choice in _choices(value):
            if choice is not None and choice not in options[key]:
                found.append(f"{key} has no option '{choice}' (options: {', '.join(options[key])})")
    if key in NAMED_BY_NAME:
        for leaf in leaves:
            if leaf is not None and not (isinstance(leaf, str) and NAMED_BY_NAME[key].fullmatch(leaf)):
                found.append(f"{key}={leaf}: a plain name (letters, digits, . _ -)"
                             + (", or NAME:VERSION of a registered model" if key == "base_model" else ""))
    if key == "base_model" and not found and value is not None:
        from headsmith.models.registry import resolve_registered

        try:
            resolve_registered(workspace, str(value))
        except HeadsmithError as e:
            found.append(str(e))
    return found


def _search_space(key: str, expression, kind: str, workspace: Workspace, allowed: list[Path],
                  options: dict) -> list[str]:
    """`tune.params.KEY=EXPRESSION`: the expression is judged as the override KEY=EXPRESSION would be."""
    if not isinstance(expression, str):
        return [f"tune.params.{key}: a sweep expression in quotes, e.g. 'choice(64, 128)'"]
    return _one(f"{key}={expression}", kind, workspace, allowed, options, {})


def _composed(overrides: list[str], kind: str, workspace: Workspace):
    """The request composed and validated as its command would: train's whole config, or the study's first point."""
    if kind == "tune":
        from headsmith.training.tune import Tuner

        return Tuner(overrides, workspace).checked
    from headsmith.training.validate import validate_config

    # composed outside a Hydra run: its folder is named only to resolve the config (nothing is written there)
    cfg = compose_train_config([*overrides, f"paths.output_dir={workspace.runs_dir / 'checking'}"])
    validate_config(cfg, workspace)
    return cfg


def targets(node) -> list[str]:
    """Every `_target_` in a config, unresolved (an interpolated target shows as its text)."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        return ([str(node["_target_"])] if "_target_" in node else []) + [t for v in node.values() for t in targets(v)]
    return [t for item in node for t in targets(item)] if isinstance(node, list) else []


def known_targets() -> frozenset[str]:
    """The `_target_`s named in headsmith's config groups and in the recipes on this machine (the operator's own)."""
    found = set()
    for folder in [config_dir(), *recipe_dirs()]:
        for path in folder.rglob("*.yaml") if folder.is_dir() else ():
            try:
                found.update(targets(OmegaConf.load(path)))
            except Exception:  # noqa: BLE001, S112 - a recipe that does not load names nothing
                continue
    return frozenset(found)
