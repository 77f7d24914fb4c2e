"""Solved heads: fit to convergence, equal to scikit-learn's logistic regression, regularization chosen on held-out
rows only, re-trained heads pulled toward the base, thresholds from out-of-fold predictions; and the warning for a
trained run that stopped while still improving."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sklearn.linear_model as sk_linear
import torch
from sklearn.datasets import load_digits

from headsmith import load_model
from headsmith.errors import ConfigError
from headsmith.evaluation.metrics import pr_curve
from headsmith.evaluation.thresholds import Policy, choose_threshold
from headsmith.training.embedding_cache import EmbeddingCache
from headsmith.training.solve import (FeatureRows, Fit, HeadSolution, LinearProblem, Setting, fit_linear,
                                     fit_mlp, linear_probabilities, solve_warnings, stratified_folds, stratified_sample)
from headsmith.training.train import SEARCH_FILE, train
from headsmith.training.validate import validate_config

from conftest import snapshot_csv


def digits(classes):
    x, y = load_digits(return_X_y=True)
    keep = np.isin(y, classes)
    return x[keep] / 16.0, np.searchsorted(classes, y[keep])


@pytest.mark.parametrize("classes, C, balanced, step", [([3, 8], 0.05, False, 2), ([3, 8], 1.0, True, 2),
                                                         ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0.3, True, 2),
                                                         ([3, 8], 10.0, False, 9), ([0, 1, 2, 3, 4], 3.0, True, 20)])
def test_linear_solve_converges_and_equals_scikit_learn(classes, C, balanced, step):
    x, y = digits(classes)
    x, y = x[::step], y[::step]  # fewer rows than features per class: regularization matters; with step 9 or 20
    # fewer rows than features (64): solved in the rows' span
    weights = np.bincount(y) if balanced else None
    sample_weight = len(y) / (len(classes) * weights[y]) if balanced else None
    w, b, fit = fit_linear(x, y, len(classes), C, sample_weight, tol=1e-8)
    assert fit.converged and fit.gradient < 1e-8  # max |gradient| of the objective at the end
    ours = linear_probabilities(x, w, b)
    reference = sk_linear.LogisticRegression(C=C, class_weight="balanced" if balanced else None, tol=1e-10,
                                             max_iter=10_000).fit(x, y)
    assert np.abs(ours - reference.predict_proba(x)).max() < 1e-3
    held = digits(classes)[0][1::step]
    assert np.abs(linear_probabilities(held, w, b) - reference.predict_proba(held)).max() < 1e-3


def test_ill_conditioned_features_converge_quickly_to_scikit_learns_solution():
    # Columns scaled over four orders of magnitude, as a few dominant directions of an embedding make them: the
    # solver's rounded coordinates reach the same optimum in few iterations (34; L-BFGS as posed needs ~500).
    x, y = digits([3, 8])
    x = x * np.logspace(-2, 2, x.shape[1])
    w, b, fit = fit_linear(x, y, 2, 0.1, tol=1e-6)
    assert fit.converged and fit.iterations < 100
    reference = sk_linear.LogisticRegression(C=0.1, solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(x, y)
    assert np.abs(linear_probabilities(x, w, b) - reference.predict_proba(x)).max() < 1e-3


def test_a_prior_pulls_the_solution_toward_it():
    x, y = digits([3, 8])
    base_w, base_b, _ = fit_linear(x, y, 2, 1.0)
    few = np.r_[np.flatnonzero(y == 0)[:10], np.flatnonzero(y == 1)[:10]]  # 20 rows
    flipped = 1 - y[few]  # data that disagree with the base completely
    nudged, nudged_b, fit = fit_linear(x[few], flipped, 2, 0.01, prior=(base_w, base_b), tol=1e-9)
    fresh, _, _ = fit_linear(x[few], flipped, 2, 0.01)
    assert fit.converged
    assert np.linalg.norm(nudged - base_w) < np.linalg.norm(fresh - base_w) / 3
    assert np.linalg.norm(nudged - base_w) < np.linalg.norm(base_w) / 3
    # 20 rows, 64 features: solved in the rows' span. Each row four times at a quarter of the weight is the same
    # objective with more rows than features, solved in all 64 dimensions: the same solution.
    whole, whole_b, _ = fit_linear(np.repeat(x[few], 4, 0), np.repeat(flipped, 4), 2, 0.01, np.full(80, 0.25),
                                   prior=(base_w, base_b), tol=1e-9)
    assert np.abs(whole - nudged).max() < 1e-6 and np.abs(whole_b - nudged_b).max() < 1e-6


@pytest.mark.parametrize("classes, balanced", [([3, 8], False), ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], True)])
def test_rows_read_a_part_at_a_time_give_the_same_solution(classes, balanced, monkeypatch):
    # What a head with more rows than fit.search_rows is finally fit with: rows read from the embeddings in parts
    # (here of 64 rows, in a shuffled order of positions), the same objective, the same optimum.
    x, y = digits(classes)
    order = np.random.default_rng(0).permutation(len(y))
    weights = len(y) / (len(classes) * np.bincount(y)[y]) if balanced else None
    prior = fit_linear(x[::7], y[::7], len(classes), 1.0)[:2]
    whole_w, whole_b, whole = fit_linear(x, y, len(classes), 0.3, weights, prior=prior, tol=1e-8)
    monkeypatch.setattr(FeatureRows, "PART_ROWS", 64)
    inverse = np.argsort(order)  # row i of (x, y) is at position inverse[i] of the shuffled features
    rows = FeatureRows(x[order], inverse)
    assert len(rows.parts()) == -(-len(y) // 64)
    part_w, part_b, parts = LinearProblem(rows, y, len(classes), weights).solve(0.3, prior=prior, tol=1e-8)
    assert whole.converged and parts.converged
    assert np.abs(part_w - whole_w).max() < 1e-5 and np.abs(part_b - whole_b).max() < 1e-5


def test_a_search_sample_keeps_every_class_and_its_proportions():
    y = np.r_[np.zeros(50_000, int), np.ones(9_950, int), np.full(50, 2)]
    sample = stratified_sample(y, 1000, seed=1)
    counts = np.bincount(y[sample])
    assert 990 <= len(sample) <= 1000 and np.all(np.diff(sample) > 0)
    assert counts[2] == 10  # a rare class keeps 1% of the sample (more than its 0.08% share)
    assert counts[0] / counts[1] == pytest.approx(50_000 / 9_950, rel=0.05)
    assert np.array_equal(sample, stratified_sample(y, 1000, seed=1))


def test_a_head_larger_than_its_search_sample_is_fit_on_all_its_rows(compose, reviews_snapshot, workspace):
    # 100 of the 192 non-test rows searched (5-fold), the chosen C then fit on all 192, read from the cache
    metrics, objects = train(compose("dataset.snapshot=reviews", "dataset.heads=[sentiment]", "fit.search_rows=100",
                                     "fit.C=[0.1,1,10]"))
    C = metrics["fit"]["heads"]["sentiment"]["chosen"]["C"]
    splits = objects["datamodule"].splits
    rows = pd.concat([splits["train"], splits["val"]], ignore_index=True)
    assert len(rows) == 192 and 95 <= metrics["val"]["sentiment"]["support"] <= 100  # the sample's out-of-fold rows
    features = EmbeddingCache(workspace).features(reviews_snapshot, objects["net"].backbone).numpy()
    reference = sk_linear.LogisticRegression(C=C, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(
        features[rows["position"]].astype(np.float64), (rows["sentiment"] == "positive").to_numpy())
    test = splits["test"]
    ours = np.array([p["sentiment"]["positive"] for p in load_model(metrics["model"]).predict(
        reviews_snapshot.inputs(test["position"]))])
    assert np.abs(ours - reference.predict_proba(features[test["position"]].astype(np.float64))[:, 1]).max() < 1e-3

    mlp, _ = train(compose("dataset.snapshot=reviews", "dataset.heads=[sentiment]", "fit.search_rows=100",
                           "head=mlp", "fit.mlp.hidden=[16]", "fit.mlp.dropout=[0.1]", "fit.mlp.weight_decay=[0.001]",
                           "fit.mlp.max_epochs=20"))
    assert 95 <= mlp["val"]["sentiment"]["support"] <= 100 and mlp["test"]["sentiment"]["support"] == len(test)
    meta = json.loads((Path(mlp["model"]) / "model.json").read_text())
    assert meta["heads"]["sentiment"]["head"]["_target_"].endswith("MLPHead")


def test_an_mlp_fit_on_rows_read_a_batch_at_a_time_equals_one_in_memory():
    x, y = digits([0, 1, 2, 3, 4])
    order = np.random.default_rng(0).permutation(len(y))
    start = fit_mlp(torch.tensor(x[:100], dtype=torch.float32), torch.tensor(y[:100]), 5, 16, 0.1, 1e-3,
                    max_epochs=5)
    common = dict(num_classes=5, hidden=16, dropout=0.1, weight_decay=1e-3, init=start.state, seed=3,
                  batch_size=32, max_epochs=8)
    memory = fit_mlp(torch.tensor(x, dtype=torch.float32), torch.tensor(y), **common)
    read = fit_mlp(FeatureRows(x[order].astype(np.float32), np.argsort(order)), torch.tensor(y), **common)
    assert memory.iterations == read.iterations == 8
    assert all(torch.equal(memory.state[k], read.state[k]) for k in memory.state)
    assert not torch.equal(memory.state["1.weight"], start.state["1.weight"])


def test_solved_run_reports_its_search_and_matches_scikit_learn(compose, reviews_snapshot, workspace, tmp_path):
    metrics, objects = train(compose("dataset.snapshot=reviews", "dataset.heads=[sentiment]"))
    run = tmp_path / "run"
    fit = metrics["fit"]
    assert fit["method"] == "solve" and fit["folds"] == 5
    solved = fit["heads"]["sentiment"]
    assert solved["convergence"]["converged"] and solved["convergence"]["gradient"] <= 1e-6
    assert [row["C"] for row in solved["search"]] == sorted(row["C"] for row in solved["search"])
    assert len(solved["search"]) == 13 and sum(row["chosen"] for row in solved["search"]) == 1
    best = max(solved["search"], key=lambda row: row["score"])
    assert solved["chosen"] == {"head": "linear", "C": best["C"]} and solved["score"] == best["score"]
    assert metrics["selection"]["best_score"] == pytest.approx(metrics["val"]["sentiment"]["f1"])
    assert metrics["selection"]["best_epoch"] is None and metrics["epochs_trained"] is None
    table = pd.read_csv(run / SEARCH_FILE)
    assert len(table) == 13 and set(table["head_name"]) == {"sentiment"}
    assert not (run / "checkpoints").exists()  # nothing trained by epochs

    # The package's answers equal scikit-learn's fit on the same embeddings (all non-test rows), same C, same weights
    splits = objects["datamodule"].splits
    features = EmbeddingCache(workspace).features(reviews_snapshot, objects["net"].backbone).numpy()
    rows = pd.concat([splits["train"], splits["val"]])
    reference = sk_linear.LogisticRegression(C=best["C"], class_weight="balanced", tol=1e-10, max_iter=10_000).fit(
        features[rows["position"]].astype(np.float64), (rows["sentiment"] == "positive").to_numpy())
    test = splits["test"]
    model = load_model(run / "model")
    ours = np.array([p["sentiment"]["positive"] for p in model.predict(reviews_snapshot.inputs(test["position"]))])
    assert np.abs(ours - reference.predict_proba(features[test["position"]].astype(np.float64))[:, 1]).max() < 1e-3


def test_thresholds_and_val_metrics_come_from_out_of_fold_predictions(compose, reviews_snapshot, workspace):
    metrics, objects = train(compose("dataset.snapshot=reviews", "dataset.heads=[sentiment]", "fit.C=[0.1,1,10]"))
    C = metrics["fit"]["heads"]["sentiment"]["chosen"]["C"]
    splits = objects["datamodule"].splits
    rows = pd.concat([splits["train"], splits["val"]], ignore_index=True)
    features = EmbeddingCache(workspace).features(reviews_snapshot, objects["net"].backbone).numpy()
    x, y = features[rows["position"]].astype(np.float64), (rows["sentiment"] == "positive").to_numpy().astype(int)
    # Each row scored by a model fit without it (the run's own folds), then the policy applied to those scores.
    out_of_fold = np.zeros(len(y))
    for fold in range(5):
        held = stratified_folds(y, 5, seed=42) == fold
        model = sk_linear.LogisticRegression(C=C, class_weight="balanced", tol=1e-10, max_iter=10_000)
        out_of_fold[held] = model.fit(x[~held], y[~held]).predict_proba(x[held])[:, 1]
    expected = choose_threshold(pr_curve(out_of_fold, y == 1), Policy.parse("f1"))
    stored = metrics["thresholds"]["sentiment"]["positive"]
    assert stored["threshold"] == pytest.approx(expected["threshold"], abs=2e-3)
    assert (stored["precision"], stored["recall"]) == pytest.approx((expected["precision"], expected["recall"]),
                                                                    abs=0.01)
    assert metrics["val"]["sentiment"]["support"] == len(rows)  # every non-test row is held out once
    # In-sample scores (the final model on the rows it was fit on) would give other figures: they are not used.
    final = np.array([p["sentiment"]["positive"] for p in load_model(metrics["model"]).predict(
        reviews_snapshot.inputs(rows["position"]))])
    in_sample = choose_threshold(pr_curve(final, y == 1), Policy.parse("f1"))
    assert (in_sample["precision"], in_sample["recall"]) != pytest.approx((stored["precision"], stored["recall"]),
                                                                          abs=1e-6)


def test_validation_split_mode_fits_on_the_training_split(compose, reviews_snapshot):
    metrics, objects = train(compose("dataset.snapshot=reviews", "fit.folds=0", "fit.C=[0.1,1]"))
    assert metrics["fit"]["held_out"] == "the validation split"
    val = objects["datamodule"].splits["val"]
    assert metrics["val"]["sentiment"]["support"] == val["sentiment"].notna().sum() == 24
    assert metrics["val"]["long"]["support"] == val["long"].notna().sum()


def test_retrain_is_pulled_toward_the_base_head_and_new_is_not(compose, reviews_snapshot, reviews_csv, workspace,
                                                               tmp_path):
    base_metrics, _ = train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'base'}"))
    base = load_model(base_metrics["model"])
    small = pd.read_csv(reviews_csv).groupby("sentiment").head(10)  # 20 rows
    small["sentiment"] = small["sentiment"].map({"positive": "negative", "negative": "positive"})  # all wrong
    small.to_csv(tmp_path / "small.csv", index=False)
    snapshot_csv(workspace, tmp_path / "small.csv", "small", "text", {"sentiment": "sentiment"})

    overrides = ["dataset.snapshot=small", "dataset.val_fraction=0.2", "dataset.test_fraction=0.2", "fit.folds=2",
                 "fit.C=[0.001,0.01]"]
    retrained, _ = train(compose(*overrides, f"base_model={base_metrics['model']}",
                                 f"paths.output_dir={tmp_path / 'retrain'}"))
    fresh, _ = train(compose(*overrides, f"paths.output_dir={tmp_path / 'new'}"))
    assert retrained["heads"] == {"sentiment": "retrain", "long": "keep"} and fresh["heads"] == {"sentiment": "new"}

    def weights(package):
        return load_model(package).heads["head_sentiment"][1].weight.detach().numpy()

    before = weights(base_metrics["model"])
    nudged, replaced = weights(retrained["model"]), weights(fresh["model"])
    assert np.linalg.norm(nudged - before) < 0.5 * np.linalg.norm(replaced - before)
    texts = reviews_snapshot.frame()["input"].tolist()[:60]
    agree = [np.mean([a["sentiment"] == b["sentiment"] or max(a["sentiment"], key=a["sentiment"].get) ==
                      max(b["sentiment"], key=b["sentiment"].get) for a, b in zip(base.predict(texts),
                                                                                 load_model(m).predict(texts))])
             for m in (retrained["model"], fresh["model"])]
    assert agree[0] > agree[1]


def test_auto_head_searches_linear_and_mlp(compose, reviews_snapshot):
    metrics, _ = train(compose("dataset.snapshot=reviews", "dataset.heads=[sentiment]", "head=auto", "fit.C=[1]",
                               "fit.mlp.hidden=[16]", "fit.mlp.dropout=[0.1]", "fit.mlp.weight_decay=[0.001]",
                               "fit.mlp.max_epochs=30"))
    search = metrics["fit"]["heads"]["sentiment"]["search"]
    assert [row["head"] for row in search] == ["linear", "mlp"]
    chosen = max(search, key=lambda row: row["score"])
    assert metrics["fit"]["heads"]["sentiment"]["chosen"]["head"] == chosen["head"]
    meta = json.loads((Path(metrics["model"]) / "model.json").read_text())
    target = meta["heads"]["sentiment"]["head"]["_target_"]
    assert target.endswith("MLPHead" if chosen["head"] == "mlp" else "LinearHead")


@pytest.mark.parametrize("overrides, message", [
    (["fit.folds=1"], "fit.folds=1: a number of folds from 2"),
    (["fit.search_rows=0"], "fit.search_rows=0: a positive whole number of rows"),
    (["fit.C=[0,1]"], "fit.C=[0, 1]: a non-empty list of positive numbers"),
    (["fit.mlp.dropout=[1.5]"], "fit.mlp.dropout=[1.5]: a non-empty list of shares"),
    (["fit=sgd", "head=auto"], "head=auto: linear or MLP is chosen by solving"),
    (["fit.method=magic"], "fit.method=magic: choose fit=solve or fit=sgd"),
])
def test_fit_mistakes_are_named(compose, reviews_snapshot, workspace, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(compose("dataset.snapshot=reviews", *overrides), workspace)


def test_a_trained_run_stopped_while_improving_says_so(compose, reviews_snapshot, tmp_path):
    metrics, _ = train(compose("dataset.snapshot=reviews", "fit=sgd", "trainer.max_epochs=1"))
    [warning] = metrics["fit"]["warnings"]
    assert warning.startswith("stopped at max_epochs (1) while val/f1 was still rising")
    assert "raise trainer.max_epochs" in warning
    stopped, _ = train(compose("dataset.snapshot=reviews", "fit=sgd", "trainer.max_epochs=30", "optimizer.lr=0.1",
                               f"paths.output_dir={tmp_path / 'stopped'}",
                               "callbacks.early_stopping.patience=1"))
    assert stopped["epochs_trained"] < 30 and stopped["fit"]["warnings"] == []


def test_edge_of_the_grid_is_reported_only_when_the_score_rises_into_it():
    grid = [0.1, 1.0, 10.0]

    def solution(scores, chosen):
        table = [{"head": "linear", "C": c, "score": v, "chosen": i == chosen}
                 for i, (c, v) in enumerate(zip(grid, scores))]
        return HeadSolution(Setting("linear", (("C", grid[chosen]),)), scores[chosen], Fit({}, 10, 1e-9, True),
                            None, None, table)

    settings = SimpleNamespace(tol=1e-6)
    [warning] = solve_warnings({"spam": solution([0.9, 0.8, 0.7], 0)}, settings)
    assert warning.startswith("head 'spam': C=0.1 is at the edge of the searched grid (fit.C)")
    assert solve_warnings({"spam": solution([0.9, 0.9, 0.9], 0)}, settings) == []  # flat: nothing beyond it to find
    assert solve_warnings({"spam": solution([0.7, 0.9, 0.8], 1)}, settings) == []
    [warning] = solve_warnings({"spam": solution([0.7, 0.8, 0.9], 2)}, SimpleNamespace(tol=1e-12))
    assert "C=10 is at the edge" in warning
