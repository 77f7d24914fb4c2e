"""Training end to end on the tiny backbone: outputs, package round trip, modes, cache, CLI and sweeps."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from headsmith import load_model
from headsmith.errors import ConfigError
from headsmith.training.embedding_cache import EmbeddingCache
from headsmith.training.train import train

from conftest import run_cli, snapshot_csv, wandb_records

TEXTS = ["A warm, funny and wise film.", "Dull, long and pointless.", "It is a movie."]


def test_tiny_run_outputs_and_package_round_trip(compose, reviews_snapshot, tmp_path):
    metrics, objects = train(compose("dataset.snapshot=reviews", "fit=sgd", "trainer.max_epochs=3", "optimizer.lr=1e-2"))
    run = tmp_path / "run"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.trainer.max_epochs == 3 and saved.optimizer.lr == 1e-2
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(metrics["selection"]["checkpoint"]).is_file()
    state = torch.load(metrics["selection"]["checkpoint"], weights_only=False)["state_dict"]
    assert state and not [k for k in state if k.startswith("net.backbone.")]  # frozen: heads only
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert metrics["splits"] == {"train": 168, "val": 24, "test": 48}
    # both heads are evaluated on the rows that label them: every row labels sentiment, half label `long`
    assert metrics["test"]["sentiment"]["support"] == 48
    assert metrics["test"]["long"]["support"] == 24
    assert set(metrics["test"]["sentiment"]["classes"]) == {"negative", "positive"}
    assert metrics["selection"]["monitor"] == "val/f1" and 0 <= metrics["selection"]["best_epoch"] < 3
    assert metrics["leakage"]["train_test_overlap"] == {"rows": 0, "examples": []}  # 240 different reviews

    model = load_model(run / "model")
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["heads"]["long"]["classes"] == ["no", "yes"]
    assert meta["lineage"]["snapshots"]["train"]["sha256"] == reviews_snapshot.manifest.sha256
    assert meta["lineage"]["recipe"]["optimizer"]["lr"] == 1e-2
    assert meta["lineage"]["metrics"]["test"] == metrics["test"]
    assert not list((run / "model").glob("*.ckpt")) and not list((run / "model").glob("*.bin"))
    reloaded, trained = model.predict(TEXTS), objects["net"].predict(TEXTS)
    assert reloaded == trained  # identical, not just close
    for scores in reloaded:
        assert set(scores) == {"sentiment", "long"}
        assert sum(scores["sentiment"].values()) == pytest.approx(1.0)


def test_same_seed_same_metrics(compose, reviews_snapshot, tmp_path):
    first, _ = train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'a'}"))
    second, _ = train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'b'}"))
    assert first["test"] == second["test"] and first["selection"]["best_score"] == second["selection"]["best_score"]


def test_embedding_cache_is_computed_once_and_equals_the_backbone(compose, reviews_snapshot, workspace, tmp_path):
    _, objects = train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'a'}"))
    backbone = objects["net"].backbone
    cache = EmbeddingCache(workspace)
    path = cache.path(reviews_snapshot, backbone)
    stamp = path.stat().st_mtime_ns
    train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'b'}", "optimizer.lr=1e-2"))
    assert path.stat().st_mtime_ns == stamp  # the second run read it
    texts = reviews_snapshot.frame()["input"].tolist()[:5]
    with torch.no_grad():
        direct = backbone.eval()(backbone.preprocess(texts))
    assert torch.allclose(cache.features(reviews_snapshot, backbone)[:5], direct, atol=1e-5)


def test_the_embedding_cache_is_sharded_and_read_a_batch_at_a_time(reviews_snapshot, workspace, tiny_backbone,
                                                                   monkeypatch):
    """Shards of 100 rows (65,536 in use): any rows, in any order, across shards, are the backbone's own; the
    object a DataLoader worker receives maps the files again instead of carrying their bytes."""
    import pickle

    import headsmith.training.embedding_cache as cache_module
    from headsmith.models.backbones import text_backbone

    monkeypatch.setattr(cache_module, "SHARD_ROWS", 100)
    backbone = text_backbone(str(tiny_backbone))
    features = EmbeddingCache(workspace).features(reviews_snapshot, backbone)
    assert features.shape == (240, backbone.out_dim) and len(list(features.folder.glob("shard-*.npy"))) == 3
    rows = [239, 0, 150, 99, 100, 0]
    texts = reviews_snapshot.frame()["input"].tolist()
    with torch.no_grad():
        direct = backbone.eval()(backbone.preprocess([texts[i] for i in rows]))
    assert torch.allclose(features[rows], direct, atol=1e-5)
    assert torch.equal(pickle.loads(pickle.dumps(features))[rows], features[rows])
    assert len(pickle.dumps(features)) < 1000


@pytest.mark.parametrize("mode, trained_blocks", [("partial", 1), ("full", 2)])
def test_partial_and_full_backbone_modes_train(compose, reviews_snapshot, tiny_backbone, mode, trained_blocks):
    from transformers import AutoModel

    _, objects = train(compose("dataset.snapshot=reviews", f"backbone.mode={mode}", "backbone.trainable_blocks=1",
                               "debug=fast", "optimizer.lr=1e-2"))
    before = AutoModel.from_pretrained(tiny_backbone).encoder.layer
    after = objects["net"].backbone.encoder.encoder.layer
    changed = [not torch.equal(b.output.dense.weight, a.output.dense.weight) for b, a in zip(before, after)]
    assert sum(changed) == trained_blocks and changed[-1]


@pytest.mark.parametrize("pretrained, cut", [("tiny", 1), ("all-MiniLM-L6-v2", 5)])
def test_a_cached_trunk_gives_the_backbones_own_embeddings(reviews_snapshot, workspace, tiny_backbone, pretrained,
                                                          cut):
    from headsmith.models.backbones import text_backbone
    from headsmith.training.embedding_cache import TrunkCache

    backbone = text_backbone(str(tiny_backbone) if pretrained == "tiny" else pretrained, max_tokens=64,
                             mode="partial", trainable_blocks=1)
    assert backbone.first_trainable_block() == cut
    states = TrunkCache(workspace).states(reviews_snapshot, backbone, cut)
    frame = reviews_snapshot.frame()
    rows = [0, 3, 17, 40, len(frame) - 1]  # mixed lengths, padded to the longest of these five
    with torch.no_grad():
        direct = backbone.eval()(backbone.preprocess(frame["input"].iloc[rows].tolist()))
        batch = states.batch(rows)
        cached = backbone.from_trunk(batch["states"], batch["attention_mask"], batch["cut"])
    assert batch["states"].dtype == torch.float16 and torch.allclose(cached, direct, atol=1e-3)
    assert TrunkCache(workspace).states(reviews_snapshot, backbone, cut).tokens.shape == states.tokens.shape


def test_partial_training_reads_the_cached_trunk(compose, reviews_snapshot, tiny_backbone, workspace, tmp_path):
    from transformers import AutoModel

    from headsmith.training.embedding_cache import TrunkCache

    _, objects = train(compose("dataset.snapshot=reviews", "backbone.mode=partial", "backbone.trainable_blocks=1",
                               "fit=sgd", "trainer.max_epochs=2", "optimizer.lr=1e-2"))
    assert len(list((workspace.root / "cache" / "trunks").glob("*-block1"))) == 1
    net = objects["net"].eval()
    before = AutoModel.from_pretrained(tiny_backbone).encoder.layer
    after = net.backbone.encoder.encoder.layer
    assert torch.equal(before[0].output.dense.weight, after[0].output.dense.weight)  # the cached block: frozen
    assert not torch.equal(before[1].output.dense.weight, after[1].output.dense.weight)  # the trained one
    # What training saw (cached states) and what the package runs (every block, from text) agree
    trunk = TrunkCache(workspace).states(reviews_snapshot, net.backbone, 1)
    rows = list(range(8))
    texts = reviews_snapshot.frame()["input"].iloc[rows].tolist()
    with torch.no_grad():
        from_states, from_text = net(trunk.batch(rows)), net(net.backbone.preprocess(texts))
    assert all(torch.allclose(from_states[h], from_text[h], atol=1e-3) for h in from_text)
    assert len(list((workspace.root / "cache" / "trunks").glob("*-block1"))) == 1  # trained blocks: same key


def test_frozen_blocks_run_in_eval_mode_in_partial_mode(tiny_backbone):
    from headsmith.models.backbones import text_backbone
    from headsmith.models.heads import LinearHead
    from headsmith.models.net import MultiHeadNet

    backbone = text_backbone(str(tiny_backbone), max_tokens=32, mode="partial", trainable_blocks=1)
    MultiHeadNet(backbone, {"s": LinearHead(backbone.out_dim, 2)}, {"s": ["a", "b"]}, {}).train()
    blocks = backbone.blocks()
    assert [b.training for b in blocks] == [False, True] and not backbone.encoder.embeddings.training
    inputs = backbone.preprocess(["a warm, funny film", "dull"])

    def states():
        return backbone.encoder(**inputs, output_hidden_states=True).hidden_states

    first, second = states(), states()
    assert torch.equal(first[1], second[1])  # what enters the trainable block: no dropout, the same every step
    assert not torch.equal(first[2], second[2])  # the trainable block keeps its dropout


def test_validation_every_n_steps(compose, reviews_snapshot, tmp_path):
    train(compose("dataset.snapshot=reviews", "fit=sgd", "trainer.max_epochs=1", "trainer.val_check_interval=2",
                  "trainer.check_val_every_n_epoch=null", "~callbacks.early_stopping"))
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert log["val/f1"].notna().sum() >= 3  # 6 training steps: validated at steps 2, 4, 6, then the final check


def test_separate_test_snapshot(compose, workspace, reviews_snapshot, reviews_csv):
    
    held_out = pd.read_csv(reviews_csv).iloc[::4]
    path = reviews_csv.with_name("held-out.csv")
    held_out.to_csv(path, index=False)
    snapshot_csv(workspace, path, "held-out", "text", {"sentiment": "sentiment"})
    metrics, _ = train(compose("dataset.snapshot=reviews", "dataset.test_snapshot=held-out",
                               "dataset.heads=[sentiment]", "debug=fast", "scheduler=cosine"))
    assert metrics["splits"]["test"] == 60 and metrics["test"]["sentiment"]["support"] == 60
    meta = json.loads((Path(metrics["model"]) / "model.json").read_text())
    assert meta["lineage"]["snapshots"]["test"]["name"] == "held-out"


def test_cli_config_mistake_stops_before_training(workspace, reviews_snapshot, tiny_backbone):
    result = run_cli("train", "dataset.snapshot=reviews", f"backbone.pretrained={tiny_backbone}", "backbone=hf_text",
                     "selection.head=toxicity", "+optimizer.momentum=0.9")
    assert result.returncode == 2
    assert "selection.head=toxicity: not a head being trained (heads: sentiment, long)" in result.stderr
    assert "optimizer.momentum: not an option of torch.optim.AdamW" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(workspace.runs_dir.rglob("*.ckpt"))


def test_cli_multirun_sweep_groups_its_tracked_runs(workspace, reviews_snapshot, tiny_backbone):
    result = run_cli("train", "dataset.snapshot=reviews", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
                     "trainer=cpu", "trainer.max_epochs=1", "name=sweep", "logger=wandb", "-m",
                     "optimizer.lr=1e-3,1e-2")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = sorted((workspace.runs_dir / "sweep").glob("multirun-*/*/metrics.json"))
    assert len(jobs) == 2
    lrs = sorted(OmegaConf.load(job.parent / "config.yaml").optimizer.lr for job in jobs)
    assert lrs == [1e-3, 1e-2]
    assert all("sentiment" in json.loads(job.read_text())["test"] for job in jobs)
    for number, job in enumerate(jobs):  # W&B: one group per sweep, a name per job
        [run] = [r.run for r in wandb_records(next((job.parent / "wandb").glob("offline-run-*"))) if r.HasField("run")]
        assert (run.display_name, run.run_group) == (f"sweep-{number}", job.parent.parent.name)


def test_wandb_offline_run_holds_config_metrics_report_and_model(compose, reviews_snapshot, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose("dataset.snapshot=reviews", "logger=wandb", "name=tracked")
    assert cfg.logger.wandb.offline is True
    metrics, _ = train(cfg)
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()  # the CSV logger stays on beside it
    [folder] = (tmp_path / "run" / "wandb").glob("offline-run-*")
    records = wandb_records(folder)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "header" and "exit" in kinds and records[kinds.index("exit")].exit.exit_code == 0

    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert config["optimizer"]["lr"] == cfg.optimizer.lr and config["dataset"]["snapshot"] == "reviews"
    logged = {item.key or item.nested_key[0] for r in records if r.HasField("history") for item in r.history.item}
    assert {"val/f1", "val/sentiment/f1/positive", "eval/pr_sentiment"} <= logged
    summary = {u.key: json.loads(u.value_json) for r in records if r.HasField("summary") for u in r.summary.update}
    assert summary["test/sentiment/f1"] == pytest.approx(metrics["test"]["sentiment"]["f1"])

    artifacts = {r.artifact.name: r.artifact for r in records if r.HasField("artifact")}
    assert set(artifacts) == {"tracked-report", "tracked-model"}
    files = {name: {e.path: e.local_path for e in a.manifest.contents} for name, a in artifacts.items()}
    assert {"report.html", "eval.json", "predictions.parquet", "pr_sentiment.png", "metrics.json"} <= set(
        files["tracked-report"])
    assert {"model.json", "model.safetensors"} <= set(files["tracked-model"])
    assert files["tracked-model"]["model.safetensors"] == str(Path(metrics["model"]) / "model.safetensors")

    synced = subprocess.run([str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert "Would sync 1 run(s)" in synced.stdout + synced.stderr


def test_the_embedding_cache_filled_on_ray_equals_the_local_one(compose, reviews_snapshot, workspace, tiny_backbone,
                                                                monkeypatch):
    """`ray={workers: 2, threads_per_worker: 1}`: the shards are embedded by a local Ray's actors and written in
    order; a training run reads them as it reads its own."""
    import headsmith.training.embedding_cache as cache_module
    from headsmith.engines import RayOptions, stop_ray
    from headsmith.models.backbones import text_backbone
    from headsmith.training.embedding_cache import embed

    monkeypatch.setattr(cache_module, "SHARD_ROWS", 100)
    backbone = text_backbone(str(tiny_backbone))
    try:
        on_ray = EmbeddingCache(workspace, RayOptions(workers=2, threads=1)).features(reviews_snapshot, backbone)
    finally:
        stop_ray()
    assert len(list(on_ray.folder.glob("shard-*.npy"))) == 3
    here = embed(backbone, reviews_snapshot.frame()["input"].tolist())
    assert on_ray.shape == tuple(here.shape) and float((on_ray[:] - here).abs().max()) < 1e-5
    with pytest.raises(ConfigError, match="ray.workers and ray.threads_per_worker: whole numbers from 1"):
        train(compose("dataset.snapshot=reviews", "ray={workers: 0}"))
