"""Model packages: `model.safetensors` (every weight, never pickle) + `model.json` + the backbone's files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from headsmith.errors import HeadsmithError
from headsmith.models.backbones import BACKBONE_KINDS
from headsmith.models.net import MultiHeadNet

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
BACKBONE_DIR = "backbone"


def save_package(net: MultiHeadNet, folder: Path | str, lineage: dict) -> Path:
    """Write the package to a staging folder, then rename it into place: a crash leaves no half package."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        net.backbone.save_files(staging / BACKBONE_DIR)
        meta = {
            "format_version": FORMAT_VERSION,
            "backbone": net.backbone.spec(),
            "heads": {h: {"classes": net.classes[h], "head": net.head_specs[h], "thresholds": net.thresholds.get(h)}
                      for h in net.classes},
            "preprocessing": {"max_tokens": getattr(net.backbone, "max_tokens", None)},
            "lineage": lineage,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_meta(folder: Path | str) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise HeadsmithError(f"{folder} is not a model package: {META_FILE} is missing")
    return json.loads(path.read_text())


def load_model(folder: Path | str) -> MultiHeadNet:
    """Rebuild the network a package describes and load its weights; `.predict(inputs)` gives per-head scores."""
    folder = Path(folder)
    meta = read_meta(folder)
    spec = meta["backbone"]
    backbone = BACKBONE_KINDS[spec["kind"]].from_files(folder / BACKBONE_DIR, spec)
    heads, head_specs = {}, {}
    for name, head in meta["heads"].items():
        if not head["head"]["_target_"].startswith("headsmith."):
            raise HeadsmithError(f"{folder / META_FILE}: head '{name}' names {head['head']['_target_']}, "
                                 "which is not a headsmith head; refusing to import it")
        heads[name], head_specs[name] = instantiate(head["head"]), head["head"]
    net = MultiHeadNet(backbone, heads, {h: v["classes"] for h, v in meta["heads"].items()}, head_specs)
    net.load_state_dict(load_file(folder / WEIGHTS_FILE))
    net.thresholds = {h: v["thresholds"] for h, v in meta["heads"].items() if v.get("thresholds")}
    net.requires_grad_(False)
    net.meta = meta
    return net.eval()
