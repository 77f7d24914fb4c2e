"""Per-class decision thresholds chosen by a policy on validation data, and the decisions they give.

A class is flagged when its score reaches its threshold (one-vs-rest, as on its precision/recall curve); a head's
decision is its highest-scoring flagged class, or none when no class reaches its threshold."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

POLICY_FORMS = "f1 (best F1), precision>=X or recall>=X (X between 0 and 1)"


@dataclass(frozen=True)
class Policy:
    metric: str  # f1 | precision | recall
    target: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Policy":
        text = str(text).replace(" ", "")
        if text == "f1":
            return cls("f1")
        match = re.fullmatch(r"(precision|recall)>=(\d*\.?\d+)", text)
        if not match or not 0 < float(match[2]) <= 1:
            raise ValueError(f"'{text}' is not a threshold policy: use {POLICY_FORMS}")
        return cls(match[1], float(match[2]))

    def __str__(self) -> str:
        return self.metric if self.target is None else f"{self.metric}>={self.target:g}"


def choose_threshold(curve: dict, policy: Policy) -> dict:
    """The curve point the policy asks for: best F1; or, among points meeting `precision>=X`, the one with the best
    recall (or meeting `recall>=X`, the best precision). When no point meets the target, the point closest to it
    (best precision, or best recall) with `met: false`. The threshold sits halfway to the next lower score, so rows
    on the data it was chosen on are decided the same even after tiny numeric differences."""
    if not curve["positives"]:
        return {"threshold": None, "policy": str(policy), "met": False, "support": 0,
                "note": "no validation rows of this class: it is flagged only when it is the top class"}
    precision, recall = curve["precision"], curve["recall"]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(precision)),
                   where=precision + recall > 0)
    if policy.metric == "f1":
        index, met = int(np.argmax(f1)), True
    else:
        value, other = (precision, recall) if policy.metric == "precision" else (recall, precision)
        meets = value >= policy.target - 1e-12
        met = bool(meets.any())
        # lexsort: the last key is primary; best `other` among the points meeting the target, ties -> best `value`
        candidates = np.flatnonzero(meets) if met else np.arange(len(value))
        primary, secondary = (other, value) if met else (value, other)
        index = int(candidates[np.lexsort((secondary[candidates], primary[candidates]))[-1]])
    thresholds = curve["thresholds"]
    threshold = (thresholds[index] + thresholds[index + 1]) / 2 if index + 1 < len(thresholds) else thresholds[index]
    return {"threshold": float(threshold), "policy": str(policy), "met": met, "precision": float(precision[index]),
            "recall": float(recall[index]), "f1": float(f1[index]), "support": int(curve["positives"])}


def policy_for(config: dict, head: str, label: str) -> Policy:
    """`thresholds.classes.HEAD.CLASS` when given, else `thresholds.policy`."""
    return Policy.parse(((config.get("classes") or {}).get(head) or {}).get(label, config.get("policy", "f1")))


def decide(scores: np.ndarray, thresholds: list[float | None]) -> tuple[np.ndarray, list[int | None]]:
    """Per row: which classes are flagged, and the index of the decided class (None: no class reached its
    threshold). A class without a threshold is flagged when it is the row's top class."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.argmax(1)
    flagged = np.zeros(scores.shape, dtype=bool)
    for i, threshold in enumerate(thresholds):
        flagged[:, i] = (top == i) if threshold is None else scores[:, i] >= threshold
    masked = np.where(flagged, scores, -np.inf)
    decided = [int(j) if flagged[r, j] else None for r, j in enumerate(masked.argmax(1))]
    return flagged, decided


def policy_problems(config) -> list[str]:
    """`thresholds` options and policies that do not parse."""
    config = dict(config or {})
    problems = [f"thresholds.{key}: not an option (options: policy, classes)"
                for key in sorted(set(config) - {"policy", "classes"})]
    for key, text in [("thresholds.policy", config.get("policy", "f1")),
                      *((f"thresholds.classes.{h}.{c}", p) for h, per in (config.get("classes") or {}).items()
                        for c, p in (per or {}).items())]:
        try:
            Policy.parse(text)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    return problems


def class_problems(config, classes: dict[str, list[str]]) -> list[str]:
    """`thresholds.classes` naming a head this run does not train, or a class its head does not have."""
    problems = []
    for head, per in (dict(config or {}).get("classes") or {}).items():
        if head not in classes:
            problems.append(f"thresholds.classes.{head}: not a head this run trains ({', '.join(classes)}); kept "
                            "heads keep the base model's thresholds")
            continue
        problems += [f"thresholds.classes.{head}.{label}: head '{head}' has no class '{label}' (classes: "
                     f"{', '.join(classes[head])})" for label in per or {} if label not in classes[head]]
    return problems


def choose_thresholds(evaluation, config, heads: list[str]) -> dict[str, dict[str, dict]]:
    """For each of `heads` that the evaluation (validation data) covers, a threshold per class by its policy."""
    config = dict(config or {})
    return {head: {label: choose_threshold(result["curves"][label], policy_for(config, head, label))
                   for label in evaluation.classes[head]}
            for head, result in evaluation.heads.items() if head in heads}
