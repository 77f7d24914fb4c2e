"""A blob whose bytes no longer match its sha256 (a disk error, a stray edit) is found before it can train or score
anything: when a snapshot is created and when embeddings are computed (not on cache hits), and `dataset fetch
--verify` re-hashes the store and re-fetches what is damaged, the store replacing the bad copy."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from headsmith.data.snapshot import SnapshotError, create_snapshot, load_snapshot
from headsmith.errors import HeadsmithError
from headsmith.models.backbones import image_backbone
from headsmith.training.embedding_cache import EmbeddingCache
from conftest import import_csv, run_cli


@pytest.fixture
def shapes(workspace, tmp_path) -> str:
    """12 small PNGs on disk (red or blue squares), imported as the dataset `shapes` with a `color` head."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i in range(12):
        color = "red" if i % 2 else "blue"
        Image.new("RGB", (32, 32), (200 if color == "red" else 10, 20 + i, 200 if color == "blue" else 10)).save(
            folder / f"{i}.png")
        rows.append({"path": f"images/{i}.png", "color": color})
    pd.DataFrame(rows).to_csv(tmp_path / "shapes.csv", index=False)
    return import_csv(workspace, tmp_path / "shapes.csv", "shapes", color="label")


def _blob_of(workspace, row: int):
    with workspace.catalog() as db:
        sha = db.execute("SELECT sha256 FROM media WHERE row = ?", (row,)).fetchone()["sha256"]
    return workspace.blobs_dir / sha[:2] / sha


def _damage(path) -> None:
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # one flipped byte near the end: the PNG may even still decode
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _snapshot(workspace, name="shapes"):
    return create_snapshot(workspace, "shapes", name=name, type="image-classification", input_column="path",
                           labels={"color": "color"})


def test_a_damaged_blob_stops_snapshot_create_and_fetch_verify_repairs_it(workspace, shapes):
    blob = _blob_of(workspace, 3)
    _damage(blob)
    with pytest.raises(SnapshotError) as error:
        _snapshot(workspace)
    message = str(error.value)
    assert "row 3 (line 4)" in message and "images/2.png" in message and "sha256" in message
    assert "headsmith dataset fetch shapes --verify" in message
    assert not workspace.snapshots_dir.exists() or not any(workspace.snapshots_dir.iterdir())

    plain = run_cli("dataset", "fetch", "shapes")  # without --verify a present blob is trusted
    assert plain.returncode == 0, plain.stderr
    verified = run_cli("dataset", "fetch", "shapes", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 damaged" in verified.stdout and "ok 12" in verified.stdout.replace(":", "")
    import hashlib
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name  # the store replaced the bad copy
    assert _snapshot(workspace).manifest.rows == 12


def test_a_blob_damaged_after_the_snapshot_stops_the_embedding_fill_but_not_a_cache_hit(workspace, shapes, tmp_path):
    import timm

    snapshot = _snapshot(workspace)
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "net.pth")
    backbone = image_backbone("timm:test_efficientnet", weights=str(tmp_path / "net.pth"), image_size=32, resize=32)
    _damage(_blob_of(workspace, 5))
    with pytest.raises(HeadsmithError) as error:
        EmbeddingCache(workspace).features(load_snapshot(workspace, "shapes"), backbone)
    message = str(error.value)
    assert "row 5 (" in message and "images/4.png" in message and "sha256" in message and "headsmith dataset fetch shapes --verify" in message
    assert run_cli("dataset", "fetch", "shapes", "--verify").returncode == 0
    features = EmbeddingCache(workspace).features(snapshot, backbone)
    assert features.shape[0] == 12
    _damage(_blob_of(workspace, 5))  # damaged again after the cache was filled: a cache hit reads no image
    assert torch.equal(EmbeddingCache(workspace).features(snapshot, backbone)[:], features[:])
