"""The multi-head network shared by training and inference: one backbone, one classifier per head."""

from __future__ import annotations

import contextlib
import copy
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


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """`module` in eval mode (no dropout) for the duration, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


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


def branch_key(name: str) -> str:
    return f"branch_{name}"


class Branch(nn.Module):
    """A branch's own copies of the backbone's blocks from `cut` on, fine-tuned for `heads`; every other head reads
    the shared backbone, whose weights stay the base model's (so kept heads answer exactly as before)."""

    def __init__(self, blocks: list[nn.Module], cut: int, heads: list[str]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.cut = cut
        self.heads = list(heads)

    @classmethod
    def copied_from(cls, backbone: nn.Module, cut: int, heads: list[str]) -> "Branch":
        return cls([copy.deepcopy(block) for block in backbone.blocks()[cut:]], cut, heads)


class MultiHeadNet(nn.Module):
    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], classes: dict[str, list[str]],
                 head_specs: dict[str, dict], branches: dict[str, Branch] | None = None):
        super().__init__()
        if set(heads) != set(classes):
            raise ValueError(f"heads {sorted(heads)} and classes {sorted(classes)} name different heads")
        self.backbone = backbone
        self.heads = nn.ModuleDict({module_key(h): m for h, m in heads.items()})
        self.branches = nn.ModuleDict({branch_key(name): b for name, b in (branches or {}).items()})
        self.branch_of = {h: name for name, b in (branches or {}).items() for h in b.heads}  # head -> its branch
        unknown = set(self.branch_of) - set(classes)
        if unknown:
            raise ValueError(f"branches name heads {sorted(unknown)} that the network does not have")
        self.classes = {h: list(c) for h, c in classes.items()}
        self.head_specs = head_specs  # how to rebuild each head: its _target_ and arguments
        self.thresholds: dict[str, dict[str, dict]] = {}  # head -> class -> chosen threshold (see thresholds.py)

    def branch(self, name: str) -> Branch:
        return self.branches[branch_key(name)]

    @property
    def branch_names(self) -> list[str]:
        return list(dict.fromkeys(self.branch_of.values()))

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    @property
    def reads_embeddings(self) -> bool:
        """Every head reads the frozen backbone's pooled embedding, so cached embeddings can stand in for it."""
        return self.backbone_frozen and not self.branches

    def forward(self, inputs: dict[str, torch.Tensor], heads: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Logits of `heads` (all by default). `inputs` is a preprocessed batch, `{"features": ...}` holding the
        frozen backbone's embeddings, or `{"states", "cut"}` holding what enters block `cut` of its backbone (the
        first trainable one, or the branch's): token states with their `attention_mask`, or an image backbone's
        feature maps. Only the branches the asked heads read run."""
        heads = list(self.classes) if heads is None else list(heads)
        wanted = list(dict.fromkeys(self.branch_of.get(h) for h in heads))
        features = self._features(inputs, [name for name in wanted if name is not None], None in wanted)
        return {h: self.heads[module_key(h)](features[self.branch_of.get(h)]) for h in heads}

    def _features(self, inputs: dict[str, torch.Tensor], branches: list[str], shared: bool) -> dict:
        """{None: the shared backbone's embedding (when `shared`), branch name: that branch's}."""
        if "features" in inputs:
            if branches:
                raise ValueError("cached embeddings are the shared backbone's: branched heads need the inputs")
            return {None: inputs["features"]}
        for part in (self.backbone, *self.branches.values()):
            rest_frozen_parts(part)  # Lightning restores saved module modes; frozen parts never use dropout
        if "states" in inputs:
            states, mask, cut = inputs["states"], inputs.get("attention_mask"), inputs["cut"]
            out = {None: self.backbone.from_trunk(states, mask, cut)} if shared else {}
            for name in branches:
                branch = self.branch(name)
                if branch.cut != cut:
                    raise ValueError(f"the cached states enter block {cut}; branch '{name}' starts at block "
                                     f"{branch.cut} (set embedding_cache=false)")
                out[name] = self.backbone.from_trunk(states, mask, cut, list(branch.blocks))
            return out
        if not branches:
            with torch.no_grad() if self.backbone_frozen else contextlib.nullcontext():
                return {None: self.backbone(inputs)}
        pooled, own = self.backbone.features(inputs, [self.branch(name) for name in branches], shared)
        return {None: pooled, **dict(zip(branches, own))}

    def train(self, mode: bool = True) -> "MultiHeadNet":
        super().train(mode)
        for part in (self.backbone, *self.branches.values()):
            rest_frozen_parts(part)  # a frozen backbone (or block) gives the same output every epoch
        return self

    def scores(self, inputs: list, batch_size: int = 64, load: Callable[[list], list] = list,
               features: torch.Tensor | None = None, description: str | None = None,
               by_length: bool = False) -> dict[str, torch.Tensor]:
        """Softmax scores per head (each row sums to 1), one row per input; `load` turns a batch of stored values
        into what the backbone takes. With `features` (the frozen backbone's embeddings, cached) `inputs` are
        row positions in it, and only the heads run. `by_length`: batches of texts of similar length."""
        def compute(batch: list) -> dict[str, torch.Tensor]:
            given = ({"features": features[torch.tensor(batch, dtype=torch.long)]} if features is not None
                     else self.backbone.preprocess(load(batch)))
            return {head: torch.softmax(logits.float(), -1) for head, logits in self(given).items()}

        with evaluating(self):
            return batched(compute, inputs, batch_size, description, by_length=by_length)

    def predict(self, inputs: list, batch_size: int = 64) -> list[dict[str, dict[str, float]]]:
        """Per input, per head, per class scores (softmax: each head's scores sum to 1)."""
        scores = {h: v.tolist() for h, v in self.scores(list(inputs), batch_size).items()}
        return [{h: dict(zip(self.classes[h], scores[h][i])) for h in self.classes} for i in range(len(inputs))]
