"""Model packages: `model.safetensors` (every weight, never pickle) + `model.json` + the backbone's files."""

from __future__ import annotations

import json
import os
import shutil
import time
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from headsmith.errors import HeadsmithError
from headsmith.files import recover_folder, replace_folder
from headsmith.models.backbones import BACKBONE_KINDS
from headsmith.models.heads import build_head, head_problems
from headsmith.models.net import Branch, MultiHeadNet

# 1: one backbone that every head reads; 2: adds `branches` (heads that read their own copies of the last blocks).
FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
BACKBONE_DIR = "backbone"


def save_package(net: MultiHeadNet, folder: Path | str, lineage: dict) -> Path:
    """Write the package to a staging folder, then rename it into place: a crash leaves no half package. LoRA
    adapters must have been merged (`merge_lora`): a package holds plain weights only."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        if any(".base_layer." in key for key in state):
            raise ValueError("the network still holds LoRA adapters: merge them first (models.lora.merge_lora)")
        save_file(state, staging / WEIGHTS_FILE)
        net.backbone.save_files(staging / BACKBONE_DIR)
        meta = {
            "format_version": FORMAT_VERSION,
            "backbone": net.backbone.spec(),
            "heads": {h: {"classes": net.classes[h], "head": net.head_specs[h], "thresholds": net.thresholds.get(h)}
                      for h in net.classes},
            "branches": {name: {"from_block": net.branch(name).cut, "heads": net.branch(name).heads}
                         for name in net.branch_names},
            "preprocessing": {"max_tokens": getattr(net.backbone, "max_tokens", None)},
            "lineage": lineage,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        replace_folder(staging, folder)  # a package being read while a resumed run rewrites it stays whole
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def meta_problems(meta) -> list[str]:
    """Every field of model.json that loading uses, type- and range-checked; `lineage` is informational only."""
    if not isinstance(meta, dict):
        return ["expected a JSON object"]
    version = meta.get("format_version")
    if not (isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= FORMAT_VERSION):
        return [f"format_version={version!r}: this headsmith reads package formats 1 to {FORMAT_VERSION} (a newer "
                "headsmith wrote it? upgrade headsmith)"]
    backbone, heads = meta.get("backbone"), meta.get("heads")
    kind = backbone.get("kind") if isinstance(backbone, dict) else None
    if not isinstance(kind, str) or kind not in BACKBONE_KINDS:
        return [f"backbone.kind={kind!r}: choose one of {', '.join(BACKBONE_KINDS)}"]
    problems = BACKBONE_KINDS[kind].spec_problems(backbone)
    out_dim = backbone.get("out_dim")
    if not (isinstance(out_dim, int) and not isinstance(out_dim, bool) and out_dim > 0):
        problems.append(f"backbone.out_dim={out_dim!r}: expected a positive whole number")
    preprocessing = meta.get("preprocessing", {})
    tokens = preprocessing.get("max_tokens") if isinstance(preprocessing, dict) else None
    if not isinstance(preprocessing, dict) or not (tokens is None or isinstance(tokens, int)
                                                   and not isinstance(tokens, bool)):
        problems.append(f"preprocessing.max_tokens={tokens!r}: expected a whole number or null")
    if not isinstance(heads, dict) or not heads:
        return [*problems, "heads: expected an object with at least one head"]
    for name, head in heads.items():
        where = f"heads.{name}"
        if not name or "." in name or not isinstance(head, dict):
            problems.append(f"{where}: expected a head name without dots, holding classes, head and thresholds")
            continue
        classes = head.get("classes")
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
                and len(set(classes)) == len(classes)):
            problems.append(f"{where}.classes={classes!r}: expected a list of distinct class names")
            continue
        found = head_problems(head.get("head"), f"{where}.head")
        if not found and head["head"]["num_classes"] != len(classes):
            found.append(f"{where}.head.num_classes={head['head']['num_classes']}: the head has {len(classes)} classes")
        if not found and head["head"]["in_dim"] != out_dim:
            found.append(f"{where}.head.in_dim={head['head']['in_dim']}: the backbone gives {out_dim} features")
        problems += found
        problems += threshold_problems(head.get("thresholds"), classes, f"{where}.thresholds")
    return problems + branch_problems(meta.get("branches", {}), heads)


def branch_problems(branches, heads: dict) -> list[str]:
    """`branches` (format 2): name -> {from_block, heads}; each head in one branch at most. Whether from_block is
    below the backbone's number of blocks is checked when the backbone is built."""
    if not isinstance(branches, dict):
        return ["branches: expected an object of branch name -> {from_block, heads}"]
    problems, seen = [], set()
    for name, branch in branches.items():
        where = f"branches.{name}"
        block = branch.get("from_block") if isinstance(branch, dict) else None
        names = branch.get("heads") if isinstance(branch, dict) else None
        if not name or "." in name or not (isinstance(block, int) and not isinstance(block, bool) and block >= 0):
            problems.append(f"{where}: expected a name without dots and from_block, a block number from 0")
        elif not (isinstance(names, list) and names and all(isinstance(h, str) and h in heads for h in names)):
            problems.append(f"{where}.heads={names!r}: expected a list of this package's heads")
        elif seen & set(names):
            problems.append(f"{where}.heads: {sorted(seen & set(names))} already read another branch")
        else:
            seen |= set(names)
    return problems


def threshold_problems(thresholds, classes: list[str], where: str) -> list[str]:
    if thresholds is None:
        return []
    if not isinstance(thresholds, dict):
        return [f"{where}: expected an object of class -> threshold, or null"]
    problems = []
    for label, chosen in thresholds.items():
        value = chosen.get("threshold") if isinstance(chosen, dict) else None
        if label not in classes:
            problems.append(f"{where}.{label}: not a class of this head ({', '.join(classes)})")
        elif chosen is not None and not (isinstance(chosen, dict) and (value is None or isinstance(value, (int, float))
                                         and not isinstance(value, bool) and 0.0 <= value <= 1.0)):
            problems.append(f"{where}.{label}: expected {{\"threshold\": a score from 0 to 1, or null}}, got "
                            f"{chosen!r}")
    return problems


def _inside(folder: Path, name: str) -> Path:
    """`folder/name`, refused when it (or, for a folder, anything in it) resolves outside the package."""
    root, path = folder.resolve(), folder / name
    for item in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        if not item.resolve().is_relative_to(root):
            raise HeadsmithError(f"{folder}: {item.relative_to(folder)} points outside the package "
                                 f"({item.resolve()}); a package's files must all lie inside its folder")
    return path


def read_meta(folder: Path | str) -> dict:
    """model.json, checked: every field loading uses has the right type and range (see `meta_problems`)."""
    folder = Path(folder)
    recover_folder(folder)  # a replacement that crashed half-way: the old package
    path = _inside(folder, META_FILE)
    if not path.is_file():
        raise HeadsmithError(f"{folder} is not a model package: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadsmithError(f"{path}: not valid JSON ({e}); the package is damaged") from None
    problems = meta_problems(meta)
    if problems:
        raise HeadsmithError(f"{path}: not a model package headsmith can load:\n" + "\n".join(f"  - {p}"
                                                                                             for p in problems))
    return meta


def load_model(folder: Path | str) -> MultiHeadNet:
    """Rebuild the network a package describes and load its weights; `.predict(inputs)` gives per-head scores.
    Nothing the package names is imported or called: heads come from the allow-list in heads.py. A package
    replaced while it was being read (a resumed run rewrites its own) is read again, so the network is all old or
    all new: never one's model.json with the other's weights."""
    folder = Path(folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        before = _folder_identity(folder)
        try:
            net = _load(folder)
        except (HeadsmithError, OSError):
            if _folder_identity(folder) == before:
                raise
            continue
        if _folder_identity(folder) == before:
            return net
    raise HeadsmithError(f"{folder}: the package was replaced again and again for a minute while it was read; "
                         "try again when the run writing it has finished")


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """Changes when replace_folder puts another folder at this path."""
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_ctime_ns


def _load(folder: Path) -> MultiHeadNet:
    meta = read_meta(folder)
    spec = meta["backbone"]
    backbone = BACKBONE_KINDS[spec["kind"]].from_files(_inside(folder, BACKBONE_DIR), spec)
    weights = _inside(folder, WEIGHTS_FILE)
    heads = {name: build_head(head["head"]) for name, head in meta["heads"].items()}
    branches = meta.get("branches", {})  # format 1: none
    blocks = len(backbone.blocks()) if branches else 0
    for name, branch in branches.items():
        if branch["from_block"] >= blocks:
            raise HeadsmithError(f"{folder / META_FILE}: branches.{name}.from_block={branch['from_block']}: the "
                                 f"backbone has {blocks} blocks; the package is damaged")
    net = MultiHeadNet(backbone, heads, {h: v["classes"] for h, v in meta["heads"].items()},
                       {h: v["head"] for h, v in meta["heads"].items()},
                       {name: Branch.copied_from(backbone, b["from_block"], b["heads"])
                        for name, b in branches.items()})
    try:
        net.load_state_dict(load_file(weights))
    except (OSError, RuntimeError, SafetensorError) as e:
        raise HeadsmithError(f"{weights}: does not hold this package's weights ({e}); the package is damaged") from None
    net.thresholds = {h: v["thresholds"] for h, v in meta["heads"].items() if v.get("thresholds")}
    net.requires_grad_(False)
    net.meta = meta
    return net.eval()
