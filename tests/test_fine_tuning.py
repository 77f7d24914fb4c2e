"""Fine-tuning that leaves a base model's other heads exact: branches (a head's own copies of the blocks that
train), LoRA adapters (merged into plain weights), the package format that carries them, and the config checks
that run before any weight loads."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from headsmith.data.snapshot import load_snapshot
from headsmith.errors import ConfigError
from headsmith.evaluation.evaluate import evaluate
from headsmith.models.backbones import text_backbone
from headsmith.models.package import load_model
from headsmith.models.registry import register_model
from headsmith.training.train import train
from headsmith.training.validate import validate_config

from conftest import run_cli
from test_serving import Deployed, post

TEXTS = ["A warm, funny and wise film.", "Dull, long and pointless.", "It is a movie about a dog and its boy."]


def test_a_branched_head_leaves_every_kept_head_bit_identical(compose, base, short_snapshot, workspace, tmp_path):
    metrics, _ = train(compose("dataset.snapshot=short", "base_model=base", "backbone.mode=partial",
                               "backbone.trainable_blocks=1", "optimizer.lr=3e-3",
                               f"paths.output_dir={tmp_path / 'branched'}"))
    package = Path(metrics["model"])
    meta = json.loads((package / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["branches"] == {"short": {"from_block": 1, "heads": ["short"]}}
    model = load_model(package)
    ours, theirs = model.scores(TEXTS), base.scores(TEXTS)
    for head in ("sentiment", "long"):  # the base backbone and heads, untouched: the same scores, to the bit
        assert torch.equal(ours[head], theirs[head])
    shared = base.backbone.state_dict()
    assert all(torch.equal(value, shared[key]) for key, value in model.backbone.state_dict().items())
    before = base.backbone.blocks()[1].state_dict()  # the branch started as a copy of the last block, and trained
    assert any(not torch.equal(value, before[key]) for key, value in model.branch("short").blocks[0].state_dict()
               .items())
    # The branch's scores: the same whether its head is asked alone or with the others (one shared pass).
    alone = torch.softmax(model(model.backbone.preprocess(TEXTS), heads=["short"])["short"], -1)
    assert torch.allclose(alone, ours["short"], atol=1e-6)
    shown = run_cli("model", "show", str(package)).stdout
    assert "head short [new]: no, yes (branch 'short': its own blocks from block 1)" in shown
    assert "head sentiment [keep]: negative, positive\n" in shown
    predicted = json.loads(run_cli("predict", str(package), *TEXTS).stdout)["results"]
    for answer, local in zip(predicted, model.predict(TEXTS)):
        assert set(answer["heads"]) == {"sentiment", "long", "short"}
        for head, classes in local.items():
            assert [c["score"] for c in answer["heads"][head]["classes"]] == pytest.approx(list(classes.values()),
                                                                                          abs=1e-6)
    # Evaluated on the same snapshot (as `headsmith eval` does; the command has its own test), the kept heads'
    # metrics are the base model's own.
    reviews = load_snapshot(workspace, "reviews")
    evals = {name: evaluate(net, reviews, split="all rows").metrics for name, net in (("base", base),
                                                                                       ("branched", model))}
    assert evals["branched"]["sentiment"] == evals["base"]["sentiment"]
    assert evals["branched"]["long"] == evals["base"]["long"]


def test_a_branched_model_as_base_keeps_its_branches_for_kept_heads(compose, base, short_snapshot, workspace,
                                                                    reviews_snapshot, tmp_path):
    """Second generation: the branched model is the base; re-training `sentiment` gives it a branch of its own while
    `short` keeps its branch and `long` the shared backbone, both answering exactly as before."""
    first, _ = train(compose("dataset.snapshot=short", "base_model=base", "backbone.mode=partial",
                             "backbone.trainable_blocks=1", f"paths.output_dir={tmp_path / 'first'}"))
    register_model(workspace, Path(first["model"]), "branched")
    second, _ = train(compose("dataset.snapshot=reviews", "dataset.heads=[sentiment]", "base_model=branched",
                              "backbone.mode=partial", "backbone.trainable_blocks=2",
                              f"paths.output_dir={tmp_path / 'second'}"))
    assert second["heads"] == {"sentiment": "retrain", "long": "keep", "short": "keep"}
    before, after = load_model(Path(first["model"])), load_model(Path(second["model"]))
    assert after.meta["branches"] == {"short": {"from_block": 1, "heads": ["short"]},
                                      "sentiment": {"from_block": 0, "heads": ["sentiment"]}}
    ours, theirs = after.scores(TEXTS), before.scores(TEXTS)
    assert torch.equal(ours["short"], theirs["short"]) and torch.equal(ours["long"], theirs["long"])
    assert not torch.equal(ours["sentiment"], theirs["sentiment"])
    # Third: `long` re-solved on the frozen shared backbone's cached embeddings; both branches kept as they were.
    register_model(workspace, Path(second["model"]), "twice")
    third, _ = train(compose("dataset.snapshot=reviews", "dataset.heads=[long]", "base_model=twice",
                             f"paths.output_dir={tmp_path / 'third'}"))
    assert third["fit"]["method"] == "solve"
    last = load_model(Path(third["model"]))
    assert last.meta["branches"] == after.meta["branches"]
    final = last.scores(TEXTS)
    assert torch.equal(final["short"], ours["short"]) and torch.equal(final["sentiment"], ours["sentiment"])


def test_lora_trains_adapters_and_packages_plain_weights_that_load_without_peft(compose, reviews_snapshot,
                                                                                tiny_backbone, workspace, tmp_path):
    metrics, objects = train(compose("dataset.snapshot=reviews", "backbone.mode=lora", "backbone.lora.rank=4",
                                     "optimizer.lr=1e-2", f"paths.output_dir={tmp_path / 'lora'}"))
    package = Path(metrics["model"])
    with safe_open(package / "model.safetensors", "pt") as weights:
        assert not [k for k in weights.keys() if "lora" in k or "base_layer" in k]
    assert list((workspace.root / "cache" / "trunks").glob("*-block0"))  # the adapters ran on the cached trunk
    # Merged adapters moved exactly the layers they wrapped (each block's query and value), nothing else.
    model, pretrained = load_model(package), text_backbone(str(tiny_backbone), max_tokens=32).state_dict()
    moved = {key for key, value in model.backbone.state_dict().items() if not torch.equal(value, pretrained[key])}
    assert moved == {f"encoder.encoder.layer.{i}.attention.self.{layer}.weight" for i in (0, 1)
                     for layer in ("query", "value")}
    # The package needs no peft: it loads and answers the same in a process where peft cannot be imported.
    script = ("import sys, json; sys.modules['peft'] = None; from headsmith import load_model; "
              f"print(json.dumps(load_model({str(package)!r}).predict({TEXTS!r})))")
    answered = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert answered.returncode == 0, answered.stderr
    for theirs, ours in zip(json.loads(answered.stdout.strip().splitlines()[-1]), model.predict(TEXTS)):
        for head in ours:
            assert list(theirs[head].values()) == pytest.approx(list(ours[head].values()), abs=1e-6)
    # What training reported on the test split is what the package (plain weights, adapters merged) scores there.
    data = objects["datamodule"]
    scored = evaluate(model, data.snapshot, data.splits["test"], split="test").metrics
    for head in ("sentiment", "long"):
        assert scored[head]["confusion"] == metrics["test"][head]["confusion"]
        assert scored[head]["f1"] == pytest.approx(metrics["test"][head]["f1"], abs=1e-9)


def test_a_lora_run_resumes_from_its_checkpoint(workspace, reviews_snapshot, tiny_backbone):
    recipe = ["dataset.snapshot=reviews", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
              "backbone.max_tokens=32", "trainer=cpu", "trainer.enable_progress_bar=false", "dataset.batch_size=32",
              "backbone.mode=lora", "backbone.lora.rank=2", "optimizer.lr=1e-2", "name=lora"]
    first = run_cli("train", *recipe, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stdout + first.stderr
    [run_dir] = (workspace.runs_dir / "lora").iterdir()
    resumed = run_cli("train", f"resume={run_dir}", "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2 and load_model(run_dir / "model").meta["format_version"] == 2


def test_a_package_written_before_branches_still_loads(base, workspace, tmp_path):
    from headsmith.models.registry import resolve_model

    old = tmp_path / "format-1"
    shutil.copytree(resolve_model(workspace, "base"), old)
    meta = json.loads((old / "model.json").read_text())
    meta["format_version"] = 1
    del meta["branches"]
    (old / "model.json").write_text(json.dumps(meta))
    loaded = load_model(old)
    assert not loaded.branches
    theirs = base.scores(TEXTS)
    assert all(torch.equal(ours, theirs[head]) for head, ours in loaded.scores(TEXTS).items())
    meta["format_version"] = 3
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="format_version=3: this headsmith reads package formats 1 to 2"):
        load_model(old)


def test_fine_tuning_mistakes_are_refused_before_any_weight_loads(compose, reviews_snapshot, base, short_snapshot,
                                                                  workspace, tiny_backbone, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the config was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)

    def problems(*overrides, fast=True):
        with pytest.raises(ConfigError) as e:
            validate_config(compose(*overrides, fast=fast), workspace)
        return str(e.value)

    text = problems("dataset.snapshot=reviews", "backbone.mode=lora", "backbone.lora.rank=0", "backbone.lora.alpha=-1",
                    "backbone.lora.dropout=1.5", "branch=true")
    assert "backbone.lora.rank=0: the adapters' rank, a whole number from 1 (8 is usual)" in text
    assert "backbone.lora.alpha=-1: the adapters' scale (alpha / rank), a positive number" in text
    assert "backbone.lora.dropout=1.5: a share from 0 to below 1" in text
    assert ("branch=true: a branch keeps a base model's other heads exactly as they are; set base_model, or "
            "branch=auto") in text
    text = problems("dataset.snapshot=reviews", "backbone.mode=lora", "backbone.lora.targets=[query,qkv]")
    assert (f"backbone.lora.targets: ['qkv'] name no Linear or Conv layer in the blocks of {tiny_backbone} (its "
            "layers: dense, key, query, value)") in text
    text = problems("dataset.snapshot=reviews", "backbone.mode=lora", "backbone.trainable_blocks=3")
    assert f"backbone.trainable_blocks=3: {tiny_backbone} has 2 blocks; choose 1 to 2" in text
    text = problems("dataset.snapshot=short", "base_model=base", "backbone.mode=lora", "backbone.lora.targets=[q_lin]")
    assert "backbone.lora.targets: ['q_lin'] name no Linear or Conv layer in the blocks of base_model base's" in text
    text = problems("dataset.snapshot=reviews", "backbone=efficientnet_lite0", "backbone.mode=lora", "branch=maybe",
                    fast=False)
    assert ("backbone.mode=lora: efficientnet-lite0 is not a transformers model, for which peft has no default "
            "adapter targets (it has them for BERT-like text encoders: MiniLM, BERT, RoBERTa, XLM-R, DeBERTa); "
            "name the layers in backbone.lora.targets") in text
    assert "branch=maybe: choose auto, true or false" in text


@pytest.mark.slow
def test_a_branched_lora_package_serves_what_predict_answers(compose, base, short_snapshot, workspace, tmp_path):
    """LoRA on a branch: the adapters merged into the branch's blocks; a real `bentoml serve` answers every head as
    `predict` does, and kept heads as the base model does."""
    metrics, _ = train(compose("dataset.snapshot=short", "base_model=base", "backbone.mode=lora",
                               "backbone.trainable_blocks=1", "optimizer.lr=1e-2",
                               f"paths.output_dir={tmp_path / 'branched-lora'}"))
    assert json.loads((Path(metrics["model"]) / "model.json").read_text())["branches"] == {
        "short": {"from_block": 1, "heads": ["short"]}}
    register_model(workspace, Path(metrics["model"]), "branched-lora")
    deployed = Deployed(workspace.root)
    try:
        url, key = deployed.create_and_serve("branched", "branched-lora:1")
        status, answer = post(f"{url}/v1/classify/text", {"texts": TEXTS}, key)
    finally:
        deployed.stop_all()
    assert status == 200, answer
    bento = next((workspace.root / "bentoml" / "bentos" / "headsmith-branched").glob("*/src/requirements.txt"))
    needs = bento.read_text().splitlines()
    assert any(n.startswith("torch==") for n in needs)  # a package needs no peft, nor the data engines, nor tests
    assert not [n for n in needs if n.split("==")[0] in ("peft", "accelerate", "duckdb", "ray", "pytest",
                                                         "pytest-xdist", "hypothesis", "selenium")]
    assert any(n.startswith("bentoml==") for n in needs)
    local, kept = (deployed.predict(ref, TEXTS) for ref in ("branched-lora:1", "base"))
    for served, ours, theirs in zip(answer["results"], local, kept):
        assert set(served) >= {"sentiment", "long", "short"}
        for head in ("sentiment", "long", "short"):
            scores = [c["score"] for c in served[head]["classes"]]
            assert scores == pytest.approx([c["score"] for c in ours[head]["classes"]], abs=1e-5)
            if head != "short":
                assert scores == pytest.approx([c["score"] for c in theirs[head]["classes"]], abs=1e-5)
