"""The multi-head network shared by training and inference: one backbone, one classifier per head."""

from __future__ import annotations

import torch
from torch import nn


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
        """`inputs` is a preprocessed batch, or `{"features": ...}` holding the frozen backbone's embeddings."""
        if "features" in inputs:
            features = inputs["features"]
        elif self.backbone_frozen:
            self.backbone.eval()  # Lightning restores saved module modes; a frozen backbone never uses dropout
            with torch.no_grad():
                features = self.backbone(inputs)
        else:
            features = self.backbone(inputs)
        return {name: self.heads[module_key(name)](features) for name in self.classes}

    def train(self, mode: bool = True) -> "MultiHeadNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # a frozen backbone gives the same embedding every epoch: no dropout
        return self

    @torch.inference_mode()
    def predict(self, inputs: list, batch_size: int = 64) -> list[dict[str, dict[str, float]]]:
        """Per input, per head, per class scores (softmax: each head's scores sum to 1)."""
        was_training = self.training
        self.eval()
        results = []
        for start in range(0, len(inputs), batch_size):
            logits = self(self.backbone.preprocess(inputs[start:start + batch_size]))
            probs = {h: torch.softmax(v.float(), dim=-1).tolist() for h, v in logits.items()}
            for i in range(len(next(iter(probs.values())))):
                results.append({h: dict(zip(self.classes[h], probs[h][i])) for h in self.classes})
        self.train(was_training)
        return results
