"""Classification metrics per head: macro and per class, from one torchmetrics template."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision,
                                         MulticlassRecall, MulticlassStatScores)

# What a selection rule may name; every one but loss is a macro average over the head's classes.
METRIC_NAMES = ("f1", "precision", "recall", "balanced_accuracy", "loss")
PER_CLASS = ("precision", "recall", "f1")


def head_metrics(num_classes: int) -> MetricCollection:
    """Macro metrics skip classes that are neither predicted nor present, as scikit-learn's do."""
    k = num_classes
    return MetricCollection({
        "precision": MulticlassPrecision(k, average="macro"),
        "recall": MulticlassRecall(k, average="macro"),
        "f1": MulticlassF1Score(k, average="macro"),
        "balanced_accuracy": MulticlassAccuracy(k, average="macro"),  # the mean of per-class recall
        "class_precision": MulticlassPrecision(k, average=None),
        "class_recall": MulticlassRecall(k, average=None),
        "class_f1": MulticlassF1Score(k, average=None),
        "class_stats": MulticlassStatScores(k, average=None),  # columns: tp, fp, tn, fn, support
    })


def summarize(computed: dict[str, torch.Tensor], classes: list[str]) -> dict:
    """The nested form written to metrics.json: macro values, total support, and a block per class."""
    support = computed["class_stats"][:, 4]
    return {
        **{name: float(computed[name]) for name in ("precision", "recall", "f1", "balanced_accuracy")},
        "support": int(support.sum()),
        "classes": {
            label: {**{m: float(computed[f"class_{m}"][i]) for m in PER_CLASS}, "support": int(support[i])}
            for i, label in enumerate(classes)
        },
    }


def flatten(stage: str, head: str, summary: dict) -> dict[str, float]:
    """Log keys: `{stage}/{head}/{metric}` and `{stage}/{head}/{metric}/{class}`, as selection rules name them."""
    flat = {f"{stage}/{head}/{m}": summary[m] for m in ("precision", "recall", "f1", "balanced_accuracy")}
    for label, values in summary["classes"].items():
        flat.update({f"{stage}/{head}/{m}/{label}": values[m] for m in PER_CLASS})
    return flat


def mean_over_heads(stage: str, summaries: dict[str, dict]) -> dict[str, float]:
    """`{stage}/{metric}`: each macro metric averaged over heads, what a selection rule without a head uses."""
    return {f"{stage}/{m}": sum(s[m] for s in summaries.values()) / len(summaries)
            for m in ("precision", "recall", "f1", "balanced_accuracy")}
