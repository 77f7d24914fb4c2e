"""Check a composed config before anything heavy runs, and report every problem at once with its key and fix."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import types
import typing

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from headsmith.data.snapshot import load_snapshot, snapshot_differences
from headsmith.errors import ConfigError, HeadsmithError
from headsmith.evaluation.thresholds import class_problems, policy_problems
from headsmith.models.backbones import (BACKBONE_KINDS, BACKBONE_MODES, TextBackbone, family, resolve_pretrained,
                                        text_block_count, trainable_blocks_problem, trainable_count)
from headsmith.models.lora import lora_problems
from headsmith.models.heads import HEADS
from headsmith.models.package import BACKBONE_DIR, read_meta
from headsmith.models.registry import resolve_model
from headsmith.training.base_model import plan_problems
from headsmith.training.selection import selection_problems
from headsmith.workspace import Workspace

TOP_LEVEL = {"dataset", "backbone", "head", "fit", "optimizer", "scheduler", "selection", "trainer", "logger",
             "callbacks", "paths", "name", "seed", "class_weights", "embedding_cache", "ray", "base_model", "heads", "branch",
             "distillation", "regression_gate", "thresholds", "resume", "tune"}
# Arguments that train() passes where the object is built, not from the config.
RUNTIME_ARGS = {
    "dataset": {"workspace", "preprocess"},
    "head": {"in_dim", "num_classes"},
    "optimizer": {"params"},
    "scheduler": {"optimizer"},
    "trainer": {"callbacks", "logger", "default_root_dir"},
}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_ok(value, annotation) -> bool:
    """A deliberately small check: plain int/float/bool/str and Optional/Union of them; anything else passes."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _signature(target):
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # annotations that cannot be evaluated: check names only
        return inspect.signature(fn)


def target_problems(key: str, node: DictConfig, runtime: set[str] = frozenset()) -> list[str]:
    """Does `_target_` import, and does every option bind to its signature with a plausible type?"""
    if "_target_" not in node:
        return [f"{key}: no _target_ (the class or function that builds it)"]
    try:
        target = get_object(node._target_)
    except Exception:
        return [f"{key}._target_={node._target_}: cannot be imported"]
    params = _signature(target).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    problems = []
    for option in list(node.keys()):
        if option.startswith("_"):
            continue
        if option not in params:
            if not takes_any:
                options = sorted(p for p in params if p not in ("self", *runtime) and not p.startswith("_"))
                problems.append(f"{key}.{option}: not an option of {node._target_}{_suggest(option, options)} "
                                f"(options: {', '.join(options)})")
            continue
        if OmegaConf.is_missing(node, option):
            continue
        value = node[option]
        plain = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        if not _type_ok(plain, params[option].annotation):
            problems.append(f"{key}.{option}={plain!r}: wrong type, {node._target_} expects "
                            f"{inspect.formatannotation(params[option].annotation)}")
    if not node.get("_partial_", False):
        for name, p in params.items():
            if (p.default is inspect.Parameter.empty and name not in node and name not in runtime and name != "self"
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
                problems.append(f"{key}.{name}: required by {node._target_}; add {key}.{name}=VALUE")
    return problems


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def static_problems(cfg: DictConfig) -> list[str]:
    problems = [f"{k}: not a config key{_suggest(k, TOP_LEVEL)} (top-level keys: {', '.join(sorted(TOP_LEVEL))})"
                for k in cfg if k not in TOP_LEVEL]
    for key in OmegaConf.missing_keys(cfg):
        problems.append(f"{key} is required: set it in the recipe or pass {key}=VALUE")
    auto_head = cfg.get("head") is not None and "candidates" in cfg.head
    for group in ("dataset", "backbone", "head", "optimizer", "scheduler", "trainer"):
        if cfg.get(group) is not None and not (group == "head" and auto_head):
            problems += target_problems(group, cfg[group], RUNTIME_ARGS.get(group, set()))
    for group in ("logger", "callbacks"):
        for name, node in (cfg.get(group) or {}).items():
            if node is not None:
                problems += target_problems(f"{group}.{name}", node, RUNTIME_ARGS.get(group, set()))
    if cfg.backbone.get("mode") not in BACKBONE_MODES:
        problems.append(f"backbone.mode={cfg.backbone.get('mode')}: choose one of {', '.join(BACKBONE_MODES)}")
    elif cfg.backbone.mode in ("partial", "lora"):
        problems += block_problems(cfg)
        if cfg.backbone.mode == "lora" and not cfg.get("base_model"):
            problems += adapter_problems(cfg)
    if cfg.get("branch", "auto") not in ("auto", True, False):
        problems.append(f"branch={cfg.get('branch')}: choose auto, true or false")
    elif cfg.get("branch") is True and not cfg.get("base_model"):
        problems.append("branch=true: a branch keeps a base model's other heads exactly as they are; set base_model, "
                        "or branch=auto")
    solved = cfg.backbone.get("mode") == "frozen" and (cfg.get("fit") or {}).get("method") == "solve"
    if cfg.backbone.get("augment") and solved:
        problems.append("backbone.augment: a solved head (frozen backbone, fit=solve) is fit on each image's one "
                        "embedding, so augmentations would never be seen; use fit=sgd embedding_cache=false (slower: "
                        "the backbone runs every step) or backbone.augment=[]")
    elif cfg.backbone.get("augment") and cfg.backbone.get("mode") == "frozen" and cfg.get("embedding_cache") is True:
        problems.append("backbone.augment: a frozen backbone with embedding_cache=true embeds each image once, so "
                        "augmentations would never be seen; set embedding_cache=false (slower: the backbone runs every "
                        "step) or backbone.augment=[]")
    if (cfg.backbone.get("augment") and cfg.backbone.get("mode") in ("partial", "lora")
            and cfg.get("embedding_cache") is True):
        problems.append(f"backbone.augment: with embedding_cache=true, {cfg.backbone.mode} mode trains on the cached "
                        "trunk (each image's feature maps before the first trainable block, computed once), so "
                        "augmentations would never be seen; set embedding_cache=false (slower: every block runs "
                        "every step) or backbone.augment=[]")
    target = cfg.get("head", {}).get("_target_")
    if not auto_head and target is not None and target not in HEADS:
        problems.append(f"head._target_={target}: a model package holds only heads it can rebuild without running "
                        f"code it names: {', '.join(HEADS)}")
    if auto_head and not solved:
        problems.append("head=auto: linear or MLP is chosen by solving each head on a frozen backbone's embeddings; "
                        "set backbone.mode=frozen and fit=solve, or pick head=linear or head=mlp")
    problems += fit_problems(cfg.get("fit"))
    if cfg.get("class_weights") not in ("balanced", "none"):
        problems.append(f"class_weights={cfg.get('class_weights')}: choose balanced or none")
    problems += policy_problems(_plain(cfg.get("thresholds")))
    ray = cfg.get("ray")
    if ray is not None:
        if not isinstance(ray, DictConfig) or set(ray) - {"address", "workers", "threads_per_worker"}:
            problems.append("ray: null, or {address: null|auto|ray://HOST:10001, workers: N, threads_per_worker: N}")
        elif not all(isinstance(ray.get(k, 1), int) and not isinstance(ray.get(k, 1), bool) and ray.get(k, 1) >= 1
                     for k in ("workers", "threads_per_worker")):
            problems.append("ray.workers and ray.threads_per_worker: whole numbers from 1")
        elif importlib.util.find_spec("ray") is None:
            problems.append("ray: Ray is not installed here: pip install 'headsmith[ray]' (or set ray=null)")
    if not isinstance(cfg.get("embedding_cache"), bool):
        problems.append(f"embedding_cache={cfg.get('embedding_cache')}: must be true or false")
    ds = cfg.dataset
    for part in ("val_fraction", "test_fraction"):
        share = ds.get(part)
        if not isinstance(share, (int, float)) or not 0 <= share < 1:
            problems.append(f"dataset.{part}={share}: must be a share between 0 and 1, like 0.1")
    if not problems and ds.val_fraction <= 0:
        problems.append("dataset.val_fraction must be above 0: the selection rule needs validation data")
    if not problems and not ds.test_snapshot and not 0 < ds.val_fraction + ds.test_fraction < 1:
        problems.append(f"dataset.val_fraction + dataset.test_fraction = {ds.val_fraction + ds.test_fraction}: "
                        "leave rows to train on (and above 0 test_fraction, or set dataset.test_snapshot)")
    return problems


def block_problems(cfg: DictConfig, workspace: Workspace | None = None) -> list[str]:
    """`backbone.trainable_blocks` for partial mode: a count from 1 and, where the count of blocks is known before
    any weight loads (a text backbone's config.json), no more than that. Without `workspace`: the backbone the
    config names; with it: the base model's, when there is one."""
    blocks, name, count = cfg.backbone.get("trainable_blocks"), cfg.backbone.get("pretrained"), None
    try:
        if workspace is None and not cfg.get("base_model"):
            if str(cfg.backbone.get("_target_")).endswith(".text_backbone"):
                count = text_block_count(resolve_pretrained(name))
        elif workspace is not None:
            if not cfg.get("base_model") or trainable_blocks_problem(blocks, None, name):
                return []  # reported by the check without a workspace
            folder = resolve_model(workspace, cfg.base_model)
            name = f"base_model {cfg.base_model}'s backbone ({read_meta(folder)['backbone']['pretrained']})"
            count = text_block_count(folder / BACKBONE_DIR)
    except HeadsmithError:
        return []  # a backbone or base model that cannot be read is reported by its own check, with the fix
    problem = trainable_blocks_problem(blocks, count, name)
    return [problem] if problem else []


def adapter_problems(cfg: DictConfig, workspace: Workspace | None = None) -> list[str]:
    """`backbone.lora` for lora mode: rank, alpha, dropout, and target layers that exist in the blocks that get
    adapters. The architecture is built without its weights (transformers: on the meta device); with `workspace`,
    the base model's."""
    lora = _plain(cfg.backbone.get("lora"))
    try:
        backbone, name = _architecture(cfg, workspace)
    except (HeadsmithError, OSError, ValueError, KeyError, TypeError):
        return lora_problems(lora, None, None, cfg.backbone.get("pretrained"))  # its own check names the backbone
    blocks, wanted = backbone.blocks(), cfg.backbone.get("trainable_blocks")
    if trainable_blocks_problem(wanted, len(blocks), name):
        blocks = None  # reported by block_problems
    else:
        blocks = blocks[len(blocks) - trainable_count("lora", wanted, len(blocks)):]
    return lora_problems(lora, family(backbone), blocks, name)


def _architecture(cfg: DictConfig, workspace: Workspace | None):
    """The backbone a config trains (the base model's, with `workspace`), without weights, and its name."""
    import torch
    from transformers import AutoConfig, AutoModel

    if workspace is not None:
        folder = resolve_model(workspace, cfg.base_model)
        spec = read_meta(folder)["backbone"]
        name = f"base_model {cfg.base_model}'s backbone ({spec['pretrained']})"
        if spec["kind"] != "text":
            return BACKBONE_KINDS[spec["kind"]].from_files(folder / BACKBONE_DIR, spec), name
        source = folder / BACKBONE_DIR
    else:
        name = cfg.backbone.get("pretrained")
        if not str(cfg.backbone.get("_target_")).endswith(".text_backbone"):
            from headsmith.models.backbones import ImageBackbone, _image_network

            return ImageBackbone(_image_network(name, None, load_weights=False), pretrained=name), name
        source = resolve_pretrained(name)
    with torch.device("meta"):
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(source, trust_remote_code=False),
                                        trust_remote_code=False)
    return TextBackbone(encoder, None, pretrained=name, max_tokens=1), name


def fit_problems(fit) -> list[str]:
    """The `fit` group: method, and a solve's folds, grids and tolerances."""
    if fit is None or fit.get("method") not in ("solve", "sgd"):
        return [f"fit.method={None if fit is None else fit.get('method')}: choose fit=solve or fit=sgd"]
    if fit.method == "sgd":
        return []
    problems = []
    folds = fit.get("folds")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 0 or folds == 1:
        problems.append(f"fit.folds={folds}: a number of folds from 2 (k-fold cross-validation on the non-test rows), "
                        "or 0 (choose on the validation split)")
    search_rows = fit.get("search_rows")
    if search_rows is not None and (not isinstance(search_rows, int) or isinstance(search_rows, bool)
                                    or search_rows < 1):
        problems.append(f"fit.search_rows={search_rows}: a positive whole number of rows (how many a head's search "
                        "holds in memory), or null (every row)")

    def positive_list(key, values, integer=False, below_one=False):
        values = _plain(values)
        ok = (isinstance(values, list) and values and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and (v >= 0 if below_one else v > 0)
            and (not integer or float(v).is_integer()) and (not below_one or v < 1) for v in values))
        if not ok:
            kind = "shares from 0 to below 1" if below_one else ("positive integers" if integer else "positive numbers")
            problems.append(f"{key}={values}: a non-empty list of {kind}, e.g. {key}=[1,10]")

    positive_list("fit.C", fit.get("C"))
    mlp = fit.get("mlp") or {}
    positive_list("fit.mlp.hidden", mlp.get("hidden"), integer=True)
    positive_list("fit.mlp.dropout", mlp.get("dropout"), below_one=True)
    positive_list("fit.mlp.weight_decay", mlp.get("weight_decay"))
    for key, value in [("fit.tol", fit.get("tol")), ("fit.mlp.lr", mlp.get("lr"))]:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            problems.append(f"{key}={value}: a positive number")
    for key, value in [("fit.max_iter", fit.get("max_iter")), ("fit.mlp.batch_size", mlp.get("batch_size")),
                       ("fit.mlp.max_epochs", mlp.get("max_epochs")), ("fit.mlp.patience", mlp.get("patience"))]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{key}={value}: a positive whole number")
    return problems


def data_problems(cfg: DictConfig, workspace: Workspace) -> list[str]:
    """Checks that need the snapshots' manifests (cheap: no data is read)."""
    ds = cfg.dataset
    try:
        snapshot = load_snapshot(workspace, ds.snapshot)
        test = load_snapshot(workspace, ds.test_snapshot) if ds.test_snapshot else None
    except HeadsmithError as e:
        return [f"dataset: {e}"]
    labelled = snapshot.manifest.heads
    heads = list(ds.heads) if ds.heads else list(labelled)
    problems = [f"dataset.heads: snapshot '{snapshot.manifest.name}' has no label column for head '{h}' "
                f"(it labels: {', '.join(labelled)}){_suggest(h, labelled)}; remove it, or create a snapshot with "
                f"--label {h}=COLUMN" for h in heads if h not in labelled]
    heads = [h for h in heads if h in labelled]
    if test:
        problems += [f"dataset.test_snapshot: {p}" for p in snapshot_differences(snapshot, test, heads)]
    problems += selection_problems(cfg.selection, {h: labelled[h].classes for h in heads})
    trained = {h: labelled[h].classes for h in heads}
    problems += class_problems(_plain(cfg.get("thresholds")), trained)
    if cfg.get("base_model"):
        try:
            meta = read_meta(resolve_model(workspace, cfg.base_model))
        except HeadsmithError as e:
            return problems + [f"base_model: {e}"]
        problems += plan_problems(cfg.get("heads") or {}, trained, {h: v["classes"] for h, v in meta["heads"].items()})
        if cfg.backbone.get("mode") in ("partial", "lora"):
            problems += block_problems(cfg, workspace)
        if cfg.backbone.get("mode") == "lora":
            problems += adapter_problems(cfg, workspace)
        kind = "image" if snapshot.manifest.type == "image-classification" else "text"
        if meta["backbone"]["kind"] != kind:
            problems.append(f"base_model: its backbone reads {meta['backbone']['kind']}, but snapshot "
                            f"'{snapshot.manifest.name}' is {snapshot.manifest.type}")
    elif cfg.get("heads"):
        problems += plan_problems(cfg.heads, trained, {})
    for name in (cfg.get("regression_gate") or {}).get("golden") or []:
        try:
            load_snapshot(workspace, name)
        except HeadsmithError as e:
            problems.append(f"regression_gate.golden: {e}")
    if (cfg.get("regression_gate") or {}).get("golden") and not cfg.get("base_model"):
        problems.append("regression_gate.golden: compares kept heads with the base model; set base_model")
    return problems


def validate_config(cfg: DictConfig, workspace: Workspace) -> None:
    problems = static_problems(cfg)
    if not OmegaConf.is_missing(cfg.dataset, "snapshot"):
        problems += data_problems(cfg, workspace)
    if problems:
        raise ConfigError(problems)
