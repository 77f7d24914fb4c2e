"""The selection rule: one metric (+ head, + class, + mode) that picks the best epoch and drives early stopping."""

from __future__ import annotations

METRIC_NAMES = ("f1", "precision", "recall", "balanced_accuracy", "loss")  # what a rule may watch (loss last)


def monitor_key(metric: str, head: str | None = None, class_label: str | None = None) -> str:
    """The logged key a rule watches, e.g. `val/f1` (mean over heads), `val/spam/recall/yes_spam`, `val/loss`."""
    if metric not in METRIC_NAMES:
        # Validation reports this with the config key; here it must not build a key nothing logs.
        return f"val/<unknown metric {metric}>"
    if metric == "loss":
        return "val/loss" if head is None else f"val/{head}/loss"
    key = "val" if head is None else f"val/{head}"
    key += f"/{metric}"
    if class_label is not None:
        key += f"/{class_label}"
    return key


def selection_problems(selection, classes: dict[str, list[str]]) -> list[str]:
    """What is wrong with a rule, given the heads and classes being trained (empty when it is right)."""
    problems = []
    metric, head, label, mode = selection.metric, selection.head, selection.class_label, selection.mode
    if metric not in METRIC_NAMES:
        problems.append(f"selection.metric={metric}: choose one of {', '.join(METRIC_NAMES)}")
    if mode not in ("min", "max"):
        problems.append(f"selection.mode={mode}: choose min or max")
    elif metric == "loss" and mode != "min" or metric in METRIC_NAMES[:-1] and mode != "max":
        want = "min" if metric == "loss" else "max"
        problems.append(f"selection.mode={mode} would pick the worst epoch by {metric}: set selection.mode={want}")
    if head is not None and head not in classes:
        problems.append(f"selection.head={head}: not a head being trained (heads: {', '.join(classes)})")
    if label is not None:
        if head is None:
            problems.append(f"selection.class_label={label} needs selection.head: the head it is a class of")
        elif head in classes and label not in classes[head]:
            problems.append(f"selection.class_label={label}: not a class of head '{head}' "
                            f"(classes: {', '.join(classes[head])})")
        if metric in ("loss", "balanced_accuracy"):
            problems.append(f"selection.class_label: {metric} has no per-class value; use f1, precision or recall")
    return problems


def still_improving(trainer, selection: dict) -> list[str]:
    """A trained run that used up max_epochs and scored its best in its last epoch stopped while still improving:
    more epochs would likely help."""
    best, last = selection["best_epoch"], trainer.current_epoch - 1
    if best is None or trainer.max_epochs in (None, -1) or trainer.current_epoch < trainer.max_epochs or best < last:
        return []
    direction = "rising" if selection["mode"] == "max" else "falling"
    return [f"stopped at max_epochs ({trainer.max_epochs}) while {selection['monitor']} was still {direction} (best "
            f"{selection['best_score']:.4f} in the last epoch): raise trainer.max_epochs"]
