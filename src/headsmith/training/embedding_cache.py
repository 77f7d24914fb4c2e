"""Frozen-backbone embeddings, computed once per (snapshot, backbone, preprocessing) and kept in the workspace.

With a frozen backbone the forward pass over the data is the only real cost of training; every epoch and every
later run on the same snapshot reads the stored embeddings instead."""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from headsmith.data.snapshot import Snapshot
from headsmith.evaluation.report import console
from headsmith.files import atomic_path
from headsmith.models.net import batched
from headsmith.workspace import Workspace


def backbone_id(backbone: torch.nn.Module) -> str:
    """Identifies what the backbone computes: its spec (incl. preprocessing) and the bytes of its weights."""
    digest = hashlib.sha256(json.dumps(backbone.spec(), sort_keys=True).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def embed(backbone: torch.nn.Module, inputs: list, load: Callable[[list], list] = list, batch_size: int = 128,
          description: str = "embedding") -> torch.Tensor:
    """One embedding per input, in input order; `load` turns a batch of stored values into what the backbone takes.
    Batches hold inputs of similar length, so little is padding."""
    was_training = backbone.training
    backbone.eval()
    try:
        out = batched(lambda batch: {"embedding": backbone(backbone.preprocess(load(batch))).float().cpu()}, inputs,
                      batch_size, description, by_length=True)
    finally:
        backbone.train(was_training)
    return out["embedding"] if out else torch.empty(0, backbone.out_dim)


class EmbeddingCache:
    def __init__(self, workspace: Workspace):
        self.folder = workspace.root / "cache" / "embeddings"
        self._ids: dict[int, str] = {}  # hashing the weights once per frozen backbone, not once per snapshot

    def path(self, snapshot: Snapshot, backbone: torch.nn.Module) -> Path:
        if id(backbone) not in self._ids:
            self._ids[id(backbone)] = backbone_id(backbone)
        return self.folder / f"{snapshot.manifest.sha256[:16]}-{self._ids[id(backbone)][:16]}.safetensors"

    def features(self, snapshot: Snapshot, backbone: torch.nn.Module) -> torch.Tensor:
        """Embeddings of every row of the snapshot, in the order of `snapshot.frame()`. Processes that ask at once
        (DDP ranks, parallel runs) wait for one of them to compute them."""
        path = self.path(snapshot, backbone)
        if path.is_file():
            return load_file(path)["embeddings"]
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():  # computed by another process while this one waited
                return load_file(path)["embeddings"]
            started = time.monotonic()
            features = embed(backbone, snapshot.frame()["input"].tolist(), load=snapshot.load_inputs,
                             description=f"embedding snapshot '{snapshot.manifest.name}' (once, then cached)")
            with atomic_path(path) as tmp:  # readers see the whole file or none
                save_file({"embeddings": features}, tmp)
        console.print(f"embedded {len(features)} rows of snapshot '{snapshot.manifest.name}' in "
                      f"{time.monotonic() - started:.1f} s, cached in {path}", highlight=False)
        return features
