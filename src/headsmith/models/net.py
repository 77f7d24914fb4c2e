"""The multi-head network shared by training and inference: one backbone, one classifier per head."""

from __future__ import annotations

from typing import Callable

import torch
from rich.progress import Progress
from torch import nn


@torch.inference_mode()
def batched(compute: Callable[[list], dict[str, torch.Tensor]], inputs: list, batch_size: int,
            description: str | None = None, by_length: bool = False) -> dict[str, torch.Tensor]:
    """The one batching loop of inference (embedding, scoring, evaluation, prediction): `compute` turns a batch of
    inputs into {name: one row per input}; the rows of every batch come back joined, in input order. `by_length`:
    batches hold inputs of similar length (little padding), put back in order after. `description` shows a
    progress bar."""
    order = (sorted(range(len(inputs)), key=lambda i: len(str(inputs[i]))) if by_length
             else list(range(len(inputs))))
    parts = []
    with Progress(transient=True, disable=description is None) as progress:
        task = progress.add_task(description or "", total=len(inputs))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            parts.append(compute([inputs[i] for i in chunk]))
            progress.advance(task, len(chunk))
    if not parts:
        return {}
    joined = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    if by_length:
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        joined = {name: rows[back] for name, rows in joined.items()}
    return joined


def rest_frozen_parts(module: nn.Module) -> None:
    """Eval mode (no dropout) for every part of `module` whose weights are all frozen: a frozen block computes the
    same thing every step, so cached and uncached partial training see the same inputs to the trainable blocks."""
    weights = list(module.parameters())
    if weights and not any(p.requires_grad for p in weights):
        module.eval()
        return
    for child in module.children():  # a part without weights (dropout) follows the part that holds it
        rest_frozen_parts(child)


def module_key(head: str) -> str:
    """Heads live in ModuleDicts under a prefixed key: a head may be called `type` or `half`, which are
    nn.Module attribute names."""
    return f"head_{head}"


class MultiHeadNet(nn.Module):
    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], classes: dict[str, list[str]],
                 head_specs: dict[str, dict]):
        super().__init__()
        if set(heads) != set(classes):
            raise ValueError(f"heads {sorted(heads)} and classes {sorted(classes)} name different heads")
        self.backbone = backbone
        self.heads = nn.ModuleDict({module_key(h): m for h, m in heads.items()})
        self.classes = {h: list(c) for h, c in classes.items()}
        self.head_specs = head_specs  # how to rebuild each head: its _target_ and arguments
        self.thresholds: dict[str, dict[str, dict]] = {}  # head -> class -> chosen threshold (see thresholds.py)

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`inputs` is a preprocessed batch, `{"features": ...}` holding the frozen backbone's embeddings, or
        `{"states", "attention_mask", "cut"}` holding the token states that enter block `cut` of its backbone (the
        first trainable one; a base model distilling on the same batch shares the frozen blocks before it)."""
        if "features" in inputs:
            features = inputs["features"]
        else:
            rest_frozen_parts(self.backbone)  # Lightning restores saved module modes; frozen parts never use dropout
            if "states" in inputs:
                features = self.backbone.from_trunk(inputs["states"], inputs["attention_mask"], inputs["cut"])
            elif self.backbone_frozen:
                with torch.no_grad():
                    features = self.backbone(inputs)
            else:
                features = self.backbone(inputs)
        return {name: self.heads[module_key(name)](features) for name in self.classes}

    def train(self, mode: bool = True) -> "MultiHeadNet":
        super().train(mode)
        rest_frozen_parts(self.backbone)  # a frozen backbone (or block) gives the same output every epoch
        return self

    def scores(self, inputs: list, batch_size: int = 64, load: Callable[[list], list] = list,
               features: torch.Tensor | None = None, description: str | None = None) -> dict[str, torch.Tensor]:
        """Softmax scores per head (each row sums to 1), one row per input; `load` turns a batch of stored values
        into what the backbone takes. With `features` (the frozen backbone's embeddings, cached) `inputs` are
        row positions in it, and only the heads run."""
        def compute(batch: list) -> dict[str, torch.Tensor]:
            given = ({"features": features[torch.tensor(batch, dtype=torch.long)]} if features is not None
                     else self.backbone.preprocess(load(batch)))
            return {head: torch.softmax(logits.float(), -1) for head, logits in self(given).items()}

        was_training = self.training
        self.eval()
        try:
            return batched(compute, inputs, batch_size, description)
        finally:
            self.train(was_training)

    def predict(self, inputs: list, batch_size: int = 64) -> list[dict[str, dict[str, float]]]:
        """Per input, per head, per class scores (softmax: each head's scores sum to 1)."""
        scores = {h: v.tolist() for h, v in self.scores(list(inputs), batch_size).items()}
        return [{h: dict(zip(self.classes[h], scores[h][i])) for h in self.classes} for i in range(len(inputs))]
