"""The LightningModule: masked multi-head loss, per-head metrics, optimizer and optional scheduler."""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from headsmith.data.datamodule import UNLABELLED
from headsmith.evaluation.metrics import flatten, head_metrics, mean_over_heads, summarize
from headsmith.models.net import MultiHeadNet, module_key

STAGES = ("val", "test")


def multi_head_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                    weights: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy per head over the rows that label it; the total is their sum. A head with no labelled row in
    the batch adds nothing (and no NaN)."""
    per_head = {}
    for head, target in labels.items():
        mask = target != UNLABELLED
        if mask.any():
            weight = weights[head].to(logits[head].device) if weights else None
            per_head[head] = F.cross_entropy(logits[head][mask], target[mask], weight=weight)
    total = torch.stack(list(per_head.values())).sum() if per_head else next(iter(logits.values())).sum() * 0.0
    return total, per_head


class MultiHeadClassifier(pl.LightningModule):
    def __init__(self, net: MultiHeadNet, optimizer: Callable, scheduler: Callable | None = None,
                 class_weights: dict[str, torch.Tensor] | None = None, teacher: MultiHeadNet | None = None,
                 kept_heads: list[str] = (), distillation=None):
        super().__init__()
        self.net = net
        # The base model, frozen, outside the module tree: not trained, not saved in checkpoints.
        self._teacher = [teacher.eval()] if teacher is not None else []
        self.kept_heads = list(kept_heads)
        # What a step computes: the trained heads, and kept ones only when the base model teaches them (a branched
        # network's kept heads are the base model's and never change).
        self.step_heads = [h for h in net.classes if h not in self.kept_heads or teacher is not None]
        self.distill_weight = float(distillation.weight) if distillation else 0.0
        self.temperature = float(distillation.temperature) if distillation else 1.0
        self._agree: dict[str, list[int]] = {}  # kept head -> [agreeing rows, rows] this validation epoch
        self.agreement: dict[str, float] = {}
        self.strict_loading = not net.backbone_frozen  # frozen: checkpoints leave the backbone out (see below)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_weights = class_weights
        self.metrics = nn.ModuleDict({
            stage: nn.ModuleDict({module_key(h): head_metrics(len(c)) for h, c in net.classes.items()})
            for stage in STAGES
        })
        self.results: dict[str, dict] = {}  # stage -> head -> summary, from the last epoch of that stage
        self._updated: dict[str, set[str]] = {stage: set() for stage in STAGES}  # heads with labels this epoch
        # stage -> logged name -> (sum of value x rows, rows) over this epoch's batches; see _add_to_epoch_mean
        self._epoch_sums: dict[str, dict[str, tuple[torch.Tensor, int]]] = {"train": {}, **{s: {} for s in STAGES}}

    def forward(self, inputs):
        return self.net(inputs, heads=self.step_heads)

    def _step(self, batch, stage: str) -> torch.Tensor:
        logits = self(batch["inputs"])
        loss, per_head = multi_head_loss(logits, batch["labels"], self.class_weights)
        size = len(next(iter(batch["labels"].values())))
        if self._teacher and stage in ("train", "val"):
            distillation = self._distill(logits, batch["inputs"], stage, size)  # on val: logged, and agreement
            if stage == "train":
                loss = loss + distillation
        if stage == "train":
            self.log("train/loss", loss, batch_size=size, prog_bar=True, on_epoch=True, on_step=True)
        # Each head's epoch loss is its mean over the rows that label it; a held-out total, the sum of those means
        # (as the training loss sums the heads' batch means), is logged at the epoch's end (see _log_epoch_means).
        for head, value in per_head.items():
            self._add_to_epoch_mean(stage, f"{stage}/{head}/loss", value,
                                    int((batch["labels"][head] != UNLABELLED).sum()))
        if stage in STAGES:
            for head, target in batch["labels"].items():
                mask = target != UNLABELLED
                if mask.any():
                    self.metrics[stage][module_key(head)].update(logits[head][mask], target[mask])
                    self._updated[stage].add(head)
        return loss

    def _distill(self, logits, inputs, stage: str, size: int) -> torch.Tensor:
        """KL between the kept heads' answers and the base model's (softened by the temperature); on validation,
        also how often the two agree on the top class."""
        teacher = self._teacher[0].to(self.device)
        with torch.no_grad():
            target = teacher(inputs, heads=self.kept_heads)
        t = self.temperature
        terms = []
        for head in self.kept_heads:
            terms.append(F.kl_div(F.log_softmax(logits[head] / t, -1), F.softmax(target[head] / t, -1),
                                  reduction="batchmean") * t * t)
            if stage == "val":
                agree = self._agree.setdefault(head, [0, 0])
                agree[0] += int((logits[head].argmax(-1) == target[head].argmax(-1)).sum())
                agree[1] += len(target[head])
        loss = torch.stack(terms).sum() * self.distill_weight
        self._add_to_epoch_mean(stage, f"{stage}/distillation", loss, size)
        return loss

    def _add_to_epoch_mean(self, stage: str, name: str, value: torch.Tensor, rows: int) -> None:
        """Epoch-only values are summed here and logged once at the epoch's end: a `self.log` call per head and step
        costs Lightning about 0.3 ms, a large share of a step on cached embeddings. Under DDP the mean is over every
        row of every rank (Lightning's sync_dist would average the ranks' means)."""
        total, count = self._epoch_sums[stage].get(name, (0.0, 0))
        self._epoch_sums[stage][name] = (total + value.detach() * rows, count + rows)

    def _log_epoch_means(self, stage: str) -> None:
        """Each epoch-only value's mean over every row of the epoch, on every rank (DDP)."""
        names = [f"{stage}/{head}/loss" for head in self.net.classes]
        if self._teacher and stage != "test":
            names.append(f"{stage}/distillation")
        sums = self._epoch_sums[stage]
        pairs = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device)
                                          for v in sums.get(name, (0.0, 0))])
                             for name in names])  # in the same order on every rank, zeros where a rank had none
        reduced = self.trainer.strategy.reduce(pairs, reduce_op="sum").tolist()
        means = {name: total / count for name, (total, count) in zip(names, reduced) if count}
        self.log_dict(means)
        if stage in STAGES:
            heads = [means[f"{stage}/{head}/loss"] for head in self.net.classes if f"{stage}/{head}/loss" in means]
            if heads:
                self.log(f"{stage}/loss", sum(heads), prog_bar=stage == "val")

    def on_train_epoch_start(self):
        self._epoch_sums["train"] = {}

    def on_train_epoch_end(self):
        self._log_epoch_means("train")

    def on_validation_epoch_start(self):
        self._agree = {}
        self._epoch_sums["val"] = {}

    def on_test_epoch_start(self):
        self._epoch_sums["test"] = {}

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _summed_over_ranks(self, values: list[int]) -> list[int]:
        """Counts from every rank's rows (DDP); the counts themselves on one process."""
        return self.trainer.strategy.reduce(torch.tensor(values, device=self.device), reduce_op="sum").tolist()

    def _end_epoch(self, stage: str) -> None:
        summaries = {}
        # A head without labels in this split has nothing to report; under DDP, "without labels" on every rank
        # (computing syncs the ranks' states, so all of them must compute the same heads).
        labelled = self._summed_over_ranks([int(h in self._updated[stage]) for h in self.net.classes])
        for head, count in zip(self.net.classes, labelled):
            collection = self.metrics[stage][module_key(head)]
            if count:
                summaries[head] = summarize(collection.compute(), self.net.classes[head])
            collection.reset()
        self._updated[stage].clear()
        if not summaries:
            return
        self.results[stage] = summaries
        logged = mean_over_heads(stage, summaries)
        for head, summary in summaries.items():
            logged.update(flatten(stage, head, summary))
        self.log(f"{stage}/f1", logged.pop(f"{stage}/f1"), prog_bar=stage == "val")
        self.log_dict(logged)

    def on_validation_epoch_end(self):
        self._log_epoch_means("val")
        self._end_epoch("val")
        if self._teacher:
            counts = self._summed_over_ranks([n for h in self.kept_heads for n in self._agree.get(h, [0, 0])])
            self.agreement = {h: counts[2 * i] / counts[2 * i + 1]
                              for i, h in enumerate(self.kept_heads) if counts[2 * i + 1]}
            self.log_dict({f"val/{h}/agreement_with_base": v for h, v in self.agreement.items()})

    def on_test_epoch_end(self):
        self._log_epoch_means("test")
        self._end_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """A frozen backbone never changes, so checkpoints skip it: a few KB per epoch instead of the backbone's
        weights (90 MB for MiniLM). The model package still holds every weight."""
        if self.net.backbone_frozen:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if not k.startswith("net.backbone.")}

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}
