"""Classification metrics per head: macro and per class from one torchmetrics template (training and evaluation
share it), plus what only a full pass over scores gives: precision/recall curves, average precision, confusion."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision,
                                         MulticlassRecall, MulticlassStatScores)

# Each class's metrics (a head's are their macro averages).
PER_CLASS = ("precision", "recall", "f1", "balanced_accuracy")


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
    """The nested form written to metrics.json: macro values, total support, and a block per class. A class's
    balanced accuracy is one-vs-rest: the mean of its recall and its specificity."""
    tp, fp, tn, fn, support = computed["class_stats"].double().unbind(1)
    specificity = torch.where(tn + fp > 0, tn / (tn + fp), torch.zeros_like(tn))
    recall = computed["class_recall"].double()
    # As scikit-learn: the mean recall over the classes that occur in the labels (one only ever predicted has no
    # recall; torchmetrics' macro accuracy would count it as 0).
    labelled = support > 0
    computed = {**computed, "class_balanced_accuracy": (recall + specificity) / 2,
                "balanced_accuracy": recall[labelled].mean() if labelled.any() else torch.tensor(0.0)}
    return {
        **{name: float(computed[name]) for name in ("precision", "recall", "f1", "balanced_accuracy")},
        "support": int(support.sum()),
        "classes": {
            label: {**{m: float(computed[f"class_{m}"][i]) for m in PER_CLASS}, "support": int(support[i])}
            for i, label in enumerate(classes)
        },
    }


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest precision/recall at every distinct score, highest threshold first, with the counts behind each
    point (so a report can show the confusion at any threshold): tp, fp out of `positives` and `negatives`. The
    same points as scikit-learn's precision_recall_curve, without its (precision 1, recall 0) end point."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positive[order].astype(np.int64)
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last row of each distinct score
    tp = np.cumsum(hits)[ends]
    fp = ends + 1 - tp
    positives = int(hits.sum())
    predicted = tp + fp
    return {
        "thresholds": ranked[ends],
        "precision": np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0),
        "recall": tp / positives if positives else np.ones(len(tp)),
        "tp": tp, "fp": fp, "positives": positives, "negatives": len(ranked) - positives,
    }


CURVE_POINTS = 1500  # per class in eval.json and the report: plenty for a screen, bounded whatever the rows


def point_at(curve: dict, threshold: float) -> int:
    """The index of the curve's point for decisions at `threshold` (scores >= it), -1 when no score reaches it."""
    return int((curve["thresholds"] >= threshold).sum()) - 1


def thinned(curve: dict, points: int = CURVE_POINTS, keep: int | None = None) -> dict:
    """At most `points` (+2) of the curve's points, evenly spread, always its first and last and the point at index
    `keep` (a chosen threshold's), as plain lists. Average precision is computed from the whole curve, before."""
    count = len(curve["thresholds"])
    every = max(1, -(-count // points))
    index = sorted(set(range(0, count, every)) | ({count - 1} if count else set())
                   | ({keep} if keep is not None and 0 <= keep < count else set()))
    return {**{k: [round(float(curve[k][i]), 6) for i in index] for k in ("thresholds", "precision", "recall")},
            **{k: [int(curve[k][i]) for i in index] for k in ("tp", "fp")},
            "positives": int(curve["positives"]), "negatives": int(curve["negatives"]), "points": count}


def average_precision(curve: dict[str, np.ndarray]) -> float:
    """Area under the step-wise PR curve: sum over thresholds of (recall gained) x precision, as scikit-learn."""
    recall = np.r_[0.0, curve["recall"]]
    return float(np.sum(np.diff(recall) * curve["precision"]))


def confusion_matrix(target: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (target, predicted), 1)
    return matrix


def evaluate_head(probabilities: np.ndarray, target: np.ndarray, classes: list[str]) -> dict:
    """Everything a report shows for one head, from its scores on the rows that label it."""
    computed = head_metrics(len(classes))(torch.tensor(probabilities), torch.tensor(target))
    summary = summarize(computed, classes)
    curves = {label: pr_curve(probabilities[:, i], target == i) for i, label in enumerate(classes)}
    for label, curve in curves.items():
        summary["classes"][label]["average_precision"] = average_precision(curve)
    present = [label for label in classes if curves[label]["positives"]]  # AP is undefined without positives
    summary["average_precision"] = (sum(summary["classes"][c]["average_precision"] for c in present) / len(present)
                                    if present else 0.0)
    summary["confusion"] = confusion_matrix(target, probabilities.argmax(1), len(classes)).tolist()
    return {"summary": summary, "curves": curves}


def flatten(stage: str, head: str, summary: dict) -> dict[str, float]:
    """Log keys: `{stage}/{head}/{metric}` and `{stage}/{head}/{metric}/{class}`, as selection rules name them."""
    flat = {f"{stage}/{head}/{m}": summary[m] for m in ("precision", "recall", "f1", "balanced_accuracy", "support")}
    for label, values in summary["classes"].items():
        flat.update({f"{stage}/{head}/{m}/{label}": values[m] for m in (*PER_CLASS, "support")})
    return flat


def mean_over_heads(stage: str, summaries: dict[str, dict]) -> dict[str, float]:
    """`{stage}/{metric}`: each macro metric averaged over heads, what a selection rule without a head uses."""
    return {f"{stage}/{m}": sum(s[m] for s in summaries.values()) / len(summaries)
            for m in ("precision", "recall", "f1", "balanced_accuracy")}
