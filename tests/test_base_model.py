"""Start from a base model: add a head, re-train a head, keep the others (bit-identical with a frozen backbone)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from headsmith import load_model
from headsmith.errors import ConfigError
from headsmith.models.registry import list_models, register_model, resolve_model
from headsmith.training.train import train
from headsmith.training.validate import validate_config

from conftest import run_cli, snapshot_csv

TEXTS = ["A warm, funny and wise film.", "Dull, long and pointless.", "It is a movie about a dog and its boy."]


def _scores(model, head):
    return [p[head] for p in model.predict(TEXTS)]


def test_add_a_head_keeps_every_base_head_bit_identical(compose, base, short_snapshot, tmp_path):
    metrics, _ = train(compose("dataset.snapshot=short", "base_model=base", f"paths.output_dir={tmp_path / 'add'}"))
    assert metrics["heads"] == {"short": "new", "sentiment": "keep", "long": "keep"}
    model = load_model(Path(metrics["model"]))
    assert set(model.classes) == {"sentiment", "long", "short"}
    for head in ("sentiment", "long"):  # frozen backbone: the same weights, the same scores, to the bit
        assert _scores(model, head) == _scores(base, head)
        assert torch.equal(model.heads[f"head_{head}"][1].weight, base.heads[f"head_{head}"][1].weight)
    meta = json.loads((Path(metrics["model"]) / "model.json").read_text())
    assert meta["lineage"]["base_model"]["ref"] == "base"
    assert meta["lineage"]["base_model"]["lineage"]["snapshots"]["train"]["name"] == "reviews"


def test_retrain_a_head_starts_from_the_base_and_keeps_the_rest(compose, base, workspace, reviews_csv, tmp_path):
    frame = pd.read_csv(reviews_csv).sample(frac=1.0, random_state=1)
    path = tmp_path / "more-sentiment.csv"
    frame[["text", "sentiment"]].to_csv(path, index=False)
    snapshot_csv(workspace, path, "more-sentiment", "text", {"sentiment": "sentiment"})

    def retrain(*overrides, name):
        metrics, _ = train(compose("dataset.snapshot=more-sentiment", "base_model=base:1", *overrides,
                                   f"paths.output_dir={tmp_path / name}"))
        assert metrics["heads"] == {"sentiment": "retrain", "long": "keep"}
        return load_model(Path(metrics["model"]))

    model = retrain(name="retrain")
    assert _scores(model, "long") == _scores(base, "long")
    assert _scores(model, "sentiment") != _scores(base, "sentiment")
    assert model.classes["sentiment"] == base.classes["sentiment"]
    # The start: trained with a zero learning rate, the head is the base head exactly (a head started from
    # scratch would be a random one).
    still = retrain("fit=sgd", "optimizer.lr=0", "trainer.max_epochs=1", name="still")
    assert torch.equal(still.heads["head_sentiment"][1].weight, base.heads["head_sentiment"][1].weight)
    # The prior: solved with a very strong L2, a retrained head stays at the base head (a new head would go to
    # zero weights).
    pulled = retrain("fit.C=[1e-7]", "fit.folds=2", name="pulled")
    ours, theirs = pulled.heads["head_sentiment"][1].weight, base.heads["head_sentiment"][1].weight
    assert (ours - theirs).norm() < 1e-3 * theirs.norm() and theirs.norm() > 0.1


def test_partial_backbone_distils_kept_heads_and_reports_agreement(compose, base, short_snapshot, tmp_path):
    """The same partial fine-tuning of a shared backbone (no branch) with distillation on and off: on keeps the kept
    heads' answers closer to the base model's."""
    drift = {}
    for weight in (5, 0):
        metrics, _ = train(compose("dataset.snapshot=short", "base_model=base", "backbone.mode=partial", "branch=false",
                                   "backbone.trainable_blocks=1", "trainer.max_epochs=2", f"distillation.weight={weight}",
                                   "optimizer.lr=3e-3", f"paths.output_dir={tmp_path / f'partial-{weight}'}"))
        model = load_model(Path(metrics["model"]))
        drift[weight] = sum(abs(ours[c] - theirs[c]) for head in ("sentiment", "long")
                            for ours, theirs in zip(_scores(model, head), _scores(base, head)) for c in ours)
        log = pd.read_csv(tmp_path / f"partial-{weight}" / "logs" / "metrics.csv")
        if weight:
            agreement = metrics["agreement_with_base"]
            assert set(agreement) == {"sentiment", "long"} and all(0.5 <= v <= 1.0 for v in agreement.values())
            assert log["train/distillation"].notna().any()
        else:
            assert not metrics.get("agreement_with_base") and "train/distillation" not in log
    assert 0 < drift[5] < 0.75 * drift[0], drift  # measured: about half


def test_head_plan_mistakes(compose, base, short_snapshot, workspace):
    def problems(*overrides):
        with pytest.raises(ConfigError) as e:
            validate_config(compose("dataset.snapshot=short", *overrides), workspace)
        return str(e.value)

    assert ("heads.sentiment=new: the base model already has a head 'sentiment'; use retrain"
            in problems("base_model=base", "+heads.sentiment=new"))
    assert ("heads.toxicity=keep: 'toxicity' is not a head of the base model (the base model's heads are: "
            "sentiment, long)" in problems("base_model=base", "+heads.toxicity=keep"))
    assert "heads.short=keep: but the snapshot labels 'short'" in problems("base_model=base", "+heads.short=keep")
    assert "base_model: no model 'nope'" in problems("base_model=nope")
    assert ("backbone.trainable_blocks=5: base_model base's backbone" in
            problems("base_model=base", "backbone.mode=partial", "backbone.trainable_blocks=5"))
    assert "has 2 blocks; choose 1 to 2" in problems("base_model=base", "backbone.mode=partial",
                                                      "backbone.trainable_blocks=5")


def test_registry_versions_and_cli(base, workspace, tmp_path):
    assert register_model(workspace, tmp_path / "base-run" / "model", "base") == ("base", 2)
    assert resolve_model(workspace, "base").name == "v2" and resolve_model(workspace, "base:1").name == "v1"
    assert [(m["name"], m["version"]) for m in list_models(workspace)] == [("base", 1), ("base", 2)]
    listed = run_cli("model", "list", env={"COLUMNS": "300"})  # a wide terminal: one line per cell
    assert "base:2" in listed.stdout and "sentiment: negative, positive" in listed.stdout
    shown = run_cli("model", "show", "base:1")
    assert shown.returncode == 0 and "head long: no, yes" in shown.stdout and "trained on snapshot reviews" in shown.stdout
    missing = run_cli("model", "show", "nope:3")
    assert missing.returncode == 2 and "no model 'nope:3'" in missing.stderr


def test_regression_gate_refuses_a_damaged_model(base, reviews_snapshot):
    import copy

    from headsmith.training.base_model import regression_gate

    intact = regression_gate(base, base, [reviews_snapshot], ["sentiment", "long"], max_f1_drop=0.01)
    assert intact["passed"] and {c["drop"] for c in intact["checks"]} == {0.0}
    damaged = copy.deepcopy(base)
    # `long` (is the review over 100 characters?) is what the tiny random backbone can learn.
    with torch.no_grad():  # swap the two classes' weights: the head now answers the opposite
        damaged.heads["head_long"][1].weight.copy_(damaged.heads["head_long"][1].weight.flip(0))
        damaged.heads["head_long"][1].bias.copy_(damaged.heads["head_long"][1].bias.flip(0))
    gate = regression_gate(base, damaged, [reviews_snapshot], ["sentiment", "long"], max_f1_drop=0.01)
    check = next(c for c in gate["checks"] if c["head"] == "long")
    assert check["base_f1"] > 0.75 and not gate["passed"] and check["drop"] > 0.3
    assert gate["failures"] == [f"head 'long' lost {check['drop']:.4f} macro F1 on snapshot 'reviews' "
                                f"({check['base_f1']:.4f} -> {check['f1']:.4f}), more than the allowed 0.0100"]


def test_a_run_that_fails_its_gate_is_not_registered(compose, base, short_snapshot, workspace, tmp_path):
    from headsmith.errors import RegressionGateFailed

    run = tmp_path / "gated"
    with pytest.raises(RegressionGateFailed, match="head 'sentiment' lost"):  # the gate demands a gain: none comes
        train(compose("dataset.snapshot=short", "base_model=base", "regression_gate.golden=[reviews]",
                      "regression_gate.max_f1_drop=-1", f"paths.output_dir={run}"))
    gate = json.loads((run / "metrics.json").read_text())["regression_gate"]
    assert not gate["passed"] and {c["head"] for c in gate["checks"]} == {"sentiment", "long"}
    refused = run_cli("model", "register", str(run), "--name", "candidate")
    assert refused.returncode == 2 and "failed its regression gate, so it is not registered" in refused.stderr
    assert run_cli("model", "register", str(run), "--name", "candidate", "--force").returncode == 0
    passed, _ = train(compose("dataset.snapshot=short", "base_model=base", "regression_gate.golden=[reviews]",
                              f"paths.output_dir={tmp_path / 'kept'}"))
    assert passed["regression_gate"]["passed"]  # frozen backbone: kept heads lose nothing
