import pytest
import torch
import numpy as np
from sklearn import metrics as sk
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score
from torch.nn import functional as F

from headsmith.evaluation.metrics import evaluate_head, flatten, head_metrics, summarize
from headsmith.training.module import multi_head_loss

TARGET = torch.tensor([0, 0, 1, 1, 2, 2])
PRED = torch.tensor([0, 1, 1, 1, 2, 0])


def test_metrics_match_hand_computed_values():
    metrics = head_metrics(3)
    metrics.update(F.one_hot(PRED, 3).float(), TARGET)  # scores whose argmax is PRED
    summary = summarize(metrics.compute(), ["a", "b", "c"])
    # class a: tp 1 fp 1 fn 1; class b: tp 2 fp 1 fn 0; class c: tp 1 fp 0 fn 1
    # one-vs-rest balanced accuracy: (recall + specificity) / 2, e.g. class a: (1/2 + 3/4) / 2
    assert summary["classes"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                                     "balanced_accuracy": 0.625, "support": 2})
    assert summary["classes"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                                     "balanced_accuracy": 0.875, "support": 2})
    assert summary["classes"]["c"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3,
                                                     "balanced_accuracy": 0.75, "support": 2})
    assert summary["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert summary["balanced_accuracy"] == pytest.approx(2 / 3)
    assert summary["support"] == 6
    assert flatten("val", "spam", summary)["val/spam/f1/b"] == pytest.approx(0.8)


def test_metrics_agree_with_scikit_learn_including_an_absent_class():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (200,), generator=generator)  # class 3 never occurs nor is predicted
    scores = torch.randn(200, 4, generator=generator)
    scores[:, 3] = -10
    scores[torch.arange(200), target] += 0.8
    metrics = head_metrics(4)
    for chunk in range(0, 200, 64):  # updated batch by batch, as in training
        metrics.update(scores[chunk:chunk + 64], target[chunk:chunk + 64])
    summary = summarize(metrics.compute(), list("abcd"))
    y, p = target.numpy(), scores.argmax(1).numpy()
    assert summary["f1"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)
    assert summary["precision"] == pytest.approx(precision_score(y, p, average="macro"), abs=1e-6)
    assert summary["recall"] == pytest.approx(recall_score(y, p, average="macro"), abs=1e-6)
    assert summary["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-6)


def test_evaluation_agrees_with_scikit_learn_per_class_curves_and_confusion():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.2 * np.eye(3)[target]
    logits[:40] = np.round(logits[:40], 1)  # tied scores, which curves must treat as one threshold
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    result = evaluate_head(probabilities.astype(np.float32), target, list("abc"))
    summary, predicted = result["summary"], probabilities.argmax(1)
    assert summary["confusion"] == sk.confusion_matrix(target, predicted).tolist()
    assert summary["f1"] == pytest.approx(sk.f1_score(target, predicted, average="macro"), abs=1e-6)
    for i, label in enumerate("abc"):
        positive, scores = target == i, probabilities.astype(np.float32)[:, i]
        per_class, curve = summary["classes"][label], result["curves"][label]
        assert per_class["precision"] == pytest.approx(sk.precision_score(positive, predicted == i), abs=1e-6)
        assert per_class["recall"] == pytest.approx(sk.recall_score(positive, predicted == i), abs=1e-6)
        assert per_class["f1"] == pytest.approx(sk.f1_score(positive, predicted == i), abs=1e-6)
        assert per_class["balanced_accuracy"] == pytest.approx(
            sk.balanced_accuracy_score(positive, predicted == i), abs=1e-6)
        assert per_class["average_precision"] == pytest.approx(sk.average_precision_score(positive, scores),
                                                               abs=1e-6)
        precision, recall, thresholds = sk.precision_recall_curve(positive, scores)
        np.testing.assert_allclose(curve["thresholds"], thresholds[::-1], atol=1e-6)  # ours: highest first
        np.testing.assert_allclose(curve["precision"], precision[:-1][::-1], atol=1e-6)
        np.testing.assert_allclose(curve["recall"], recall[:-1][::-1], atol=1e-6)
        assert curve["tp"][-1] == positive.sum() and curve["fp"][-1] + curve["tp"][-1] == 300
    assert summary["average_precision"] == pytest.approx(
        np.mean([sk.average_precision_score(target == i, probabilities.astype(np.float32)[:, i])
                 for i in range(3)]), abs=1e-6)


def test_masked_multi_head_loss_ignores_unlabelled_rows():
    torch.manual_seed(0)
    logits = {"sentiment": torch.randn(4, 2), "spam": torch.randn(4, 3), "nsfw": torch.randn(4, 2)}
    labels = {"sentiment": torch.tensor([0, -1, 1, -1]), "spam": torch.tensor([-1, 2, -1, 0]),
              "nsfw": torch.tensor([-1, -1, -1, -1])}
    total, per_head = multi_head_loss(logits, labels)
    assert set(per_head) == {"sentiment", "spam"}  # nsfw has no label in this batch: no term, no NaN
    assert per_head["sentiment"] == pytest.approx(float(F.cross_entropy(logits["sentiment"][[0, 2]],
                                                                        torch.tensor([0, 1]))))
    assert per_head["spam"] == pytest.approx(float(F.cross_entropy(logits["spam"][[1, 3]], torch.tensor([2, 0]))))
    assert total == pytest.approx(float(per_head["sentiment"] + per_head["spam"]))
    weights = {"sentiment": torch.tensor([3.0, 1.0]), "spam": torch.ones(3), "nsfw": torch.ones(2)}
    _, weighted = multi_head_loss(logits, labels, weights)
    expected = F.cross_entropy(logits["sentiment"][[0, 2]], torch.tensor([0, 1]), weight=weights["sentiment"])
    assert weighted["sentiment"] == pytest.approx(float(expected))
    nothing, parts = multi_head_loss(logits, {"nsfw": labels["nsfw"]})
    assert parts == {} and float(nothing) == 0.0


def test_balanced_accuracy_agrees_with_scikit_learn_when_a_predicted_class_has_no_labels():
    """scikit-learn averages recall over the classes that occur in the labels; a class only ever predicted (no
    recall to speak of) does not count as a recall of 0."""
    target = torch.tensor([0, 0, 0, 1, 1, 1])
    predicted = torch.tensor([0, 0, 2, 1, 1, 2])  # class 2 is predicted, never labelled
    summary = summarize(head_metrics(3)(torch.nn.functional.one_hot(predicted, 3).float(), target), list("abc"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn notes the class absent from y_true
        expected = balanced_accuracy_score(target.numpy(), predicted.numpy())
    assert expected == pytest.approx(2 / 3)
    assert summary["balanced_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_pr_curves_are_thinned_to_a_bounded_size_and_average_precision_stays_exact():
    """eval.json and the report hold at most CURVE_POINTS points per class whatever the rows (here 100,000 distinct
    scores), among them both ends and a chosen threshold's; average precision comes from every point."""
    from sklearn.metrics import average_precision_score

    from headsmith.evaluation.metrics import CURVE_POINTS, average_precision, point_at, pr_curve, thinned

    rng = np.random.default_rng(0)
    scores = rng.permutation(100_000) / 100_000  # distinct, also as eval.json rounds them (6 decimals)
    positive = rng.random(100_000) < scores
    curve = pr_curve(scores, positive)
    keep = point_at(curve, 0.5)
    small = thinned(curve, keep=keep)
    assert len(curve["thresholds"]) == small["points"] == 100_000
    assert len(small["thresholds"]) <= CURVE_POINTS + 2
    full = {round(float(t), 6): (round(float(p), 6), round(float(r), 6))
            for t, p, r in zip(curve["thresholds"], curve["precision"], curve["recall"])}
    assert all(full[t] == (p, r) for t, p, r in zip(small["thresholds"], small["precision"], small["recall"]))
    assert small["thresholds"][0] == round(float(curve["thresholds"][0]), 6) and small["recall"][-1] == 1.0
    assert round(float(curve["thresholds"][keep]), 6) in small["thresholds"]
    assert small["tp"][-1] == small["positives"] == int(positive.sum())
    assert average_precision(curve) == pytest.approx(average_precision_score(positive, scores), abs=1e-9)
