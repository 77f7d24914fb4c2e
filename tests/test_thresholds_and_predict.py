"""Thresholds chosen by policy, applied by `predict`; `headsmith eval` and `headsmith predict` as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from headsmith.errors import ConfigError
from headsmith.evaluation.metrics import pr_curve
from headsmith.evaluation.thresholds import Policy, choose_threshold, decide
from headsmith.predictor import Predictor
from headsmith.training.train import train
from headsmith.training.validate import validate_config
from conftest import run_cli


def _flag_stats(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = scores >= threshold
    return sk.precision_score(positive, flagged, zero_division=0), sk.recall_score(positive, flagged)


@pytest.mark.parametrize("policy", ["precision>=0.9", "precision>=0.75", "recall>=0.95", "recall>=0.5", "f1"])
def test_a_chosen_threshold_meets_its_target_on_the_data_it_was_chosen_on(policy):
    rng = np.random.default_rng(3)
    positive = rng.random(400) < 0.3
    scores = np.clip(rng.normal(0.35 + 0.3 * positive, 0.15), 0, 1).round(3)  # ties too
    chosen = choose_threshold(pr_curve(scores, positive), Policy.parse(policy))
    precision, recall = _flag_stats(scores, positive, chosen["threshold"])
    assert chosen["met"] and (precision, recall) == pytest.approx((chosen["precision"], chosen["recall"]))
    target = Policy.parse(policy)
    if target.metric == "precision":
        assert precision >= target.target
        # and no threshold meeting the target has a better recall
        assert all(r <= recall + 1e-12 for t in np.unique(scores) for p, r in [_flag_stats(scores, positive, t)]
                   if p >= target.target)
    elif target.metric == "recall":
        assert recall >= target.target
    else:
        best = max(sk.f1_score(positive, scores >= t) for t in np.unique(scores))
        assert chosen["f1"] == pytest.approx(best)


def test_an_unreachable_policy_is_reported_not_met_and_bad_policies_are_refused():
    positive = np.array([False, True, True, False])  # the top score is a negative: precision never passes 2/3
    chosen = choose_threshold(pr_curve(np.array([0.9, 0.8, 0.3, 0.2]), positive), Policy.parse("precision>=0.99"))
    assert chosen["met"] is False and chosen["precision"] == pytest.approx(2 / 3)  # the closest point
    assert chosen["recall"] == 1.0 and 0.2 < chosen["threshold"] < 0.3
    for text in ("precision>0.9", "accuracy>=0.9", "recall>=1.5", "f2"):
        with pytest.raises(ValueError, match="is not a threshold policy"):
            Policy.parse(text)


def test_decisions_flag_classes_at_their_threshold_and_pick_the_top_flagged_one():
    scores = np.array([[0.7, 0.2, 0.1], [0.5, 0.45, 0.05], [0.3, 0.3, 0.4]])
    flagged, decided = decide(scores, [0.8, 0.4, None])  # no threshold: flagged when top class
    assert flagged.tolist() == [[False, False, False], [False, True, False], [False, False, True]]
    assert decided == [None, 1, 2]


def test_threshold_config_mistakes_are_named(compose, reviews_snapshot, workspace):
    with pytest.raises(ConfigError) as e:
        validate_config(compose("dataset.snapshot=reviews", "thresholds.policy='precision>1'",
                                "+thresholds.classes={sentiment: {neutral: f1}, spam: {yes: f1}}"), workspace)
    assert "thresholds.policy: 'precision>1' is not a threshold policy" in str(e.value)
    assert "thresholds.classes.sentiment.neutral: head 'sentiment' has no class 'neutral'" in str(e.value)
    assert "thresholds.classes.spam: not a head this run trains" in str(e.value)


def test_thresholds_are_stored_in_the_package_and_applied_by_predict(compose, reviews_snapshot, workspace):
    metrics, objects = train(compose("dataset.snapshot=reviews", "fit=sgd", "trainer.max_epochs=3",
                                     "thresholds.policy='recall>=0.8'",
                                     "+thresholds.classes={sentiment: {positive: f1}}"))
    package = Path(metrics["model"])
    stored = json.loads((package / "model.json").read_text())["heads"]["sentiment"]["thresholds"]
    assert stored["negative"]["policy"] == "recall>=0.8" and stored["positive"]["policy"] == "f1"
    assert stored["negative"]["met"] and stored["negative"]["recall"] >= 0.8

    # predict, on the raw validation texts, flags exactly as recorded when the thresholds were chosen
    val = objects["datamodule"].splits["val"]
    val = val[val["sentiment"].notna()]
    answers = Predictor(package).predict(objects["datamodule"].snapshot.inputs(val["position"]))
    for label in ("negative", "positive"):
        flagged = np.array([[c["flagged"] for c in a["sentiment"]["classes"] if c["class"] == label][0]
                            for a in answers])
        positive = (val["sentiment"] == label).to_numpy()
        precision = sk.precision_score(positive, flagged, zero_division=0)
        assert (precision, sk.recall_score(positive, flagged)) == pytest.approx(
            (stored[label]["precision"], stored[label]["recall"]), abs=1e-9)
    assert sk.recall_score((val["sentiment"] == "negative").to_numpy(), np.array(
        [a["sentiment"]["classes"][0]["flagged"] for a in answers])) >= 0.8
    first = answers[0]["sentiment"]
    assert first["classes"][0]["threshold"] == stored["negative"]["threshold"]
    assert sum(c["score"] for c in first["classes"]) == pytest.approx(1.0, abs=1e-6)
    flagged_classes = [c for c in first["classes"] if c["flagged"]]
    assert first["decision"] == (max(flagged_classes, key=lambda c: c["score"])["class"] if flagged_classes else None)

    # the command line answers the same, as JSON
    texts = objects["datamodule"].snapshot.inputs(val["position"])[:2]
    cli = run_cli("predict", str(package), *texts, "--head", "sentiment")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    assert [r["input"] for r in printed["results"]] == texts and list(printed["results"][0]["heads"]) == ["sentiment"]
    for result, answer in zip(printed["results"], answers[:2]):
        assert [c["score"] for c in result["heads"]["sentiment"]["classes"]] == pytest.approx(
            [c["score"] for c in answer["sentiment"]["classes"]], abs=1e-6)
    unknown = run_cli("predict", str(package), "some text", "--head", "spam")
    assert unknown.returncode == 2 and "unknown head 'spam'" in unknown.stderr + unknown.stdout


def test_eval_command_writes_a_consistent_evaluation(compose, reviews_snapshot, workspace, tmp_path):
    metrics, _ = train(compose("dataset.snapshot=reviews", "trainer.max_epochs=1"))
    run_cli("model", "register", str(Path(metrics["model"]).parent), "--name", "reviews-model")
    result = run_cli("eval", "reviews-model", "reviews", "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    assert f"report: {tmp_path / 'eval' / 'report.html'}" in result.stdout
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["model"]["name"] == "reviews-model:1" and saved["rows"] == 240
    table = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    for head in ("sentiment", "long"):
        rows = table[table[head].notna()]
        assert saved["metrics"][head]["f1"] == pytest.approx(
            sk.f1_score(rows[head], rows[f"{head}:predicted"], average="macro"), abs=1e-6)
        assert saved["metrics"][head]["support"] == len(rows)
    missing = run_cli("eval", "no-such-model", "reviews")
    assert missing.returncode == 2 and "no model 'no-such-model'" in missing.stdout + missing.stderr


@pytest.mark.parametrize("by_length", [False, True])
def test_the_batching_loop_gives_one_row_per_input_in_input_order(by_length):
    import torch

    from headsmith.models.net import batched

    texts = ["a" * n for n in (7, 1, 30, 4, 4, 12, 2, 9, 25, 3, 8)]  # mixed lengths; 11 rows in batches of 4
    seen = []

    def compute(batch):
        seen.append([len(t) for t in batch])
        return {"length": torch.tensor([[len(t)] for t in batch]), "twice": torch.tensor([2 * len(t) for t in batch])}

    out = batched(compute, texts, batch_size=4, by_length=by_length)
    assert out["length"][:, 0].tolist() == [len(t) for t in texts]
    assert out["twice"].tolist() == [2 * len(t) for t in texts]
    assert [len(b) for b in seen] == [4, 4, 3]
    if by_length:  # each batch holds similar lengths
        assert seen == [[1, 2, 3, 4], [4, 7, 8, 9], [12, 25, 30]]
    assert batched(compute, [], batch_size=4) == {}
