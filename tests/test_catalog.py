"""The catalog at scale: a workspace made by older code upgrades in place; counts kept by triggers match a recount
after every kind of change; chunked import and snapshot give the bytes one pass gave."""

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import headsmith.data.ingest as ingest
import headsmith.data.snapshot as snapshot_module
from headsmith.data.dataset import add_rows, delete_rows, fetch_media, import_dataset, set_value, summary
from headsmith.data.ingest import infer_columns, read_table
from headsmith.data.snapshot import create_snapshot, load_snapshot
from headsmith.workspace import RECOUNT, SCHEMA_VERSION

from conftest import import_csv, run_cli

OLD_WORKSPACE = Path(__file__).parent / "data" / "workspace-v1"  # made by 881aaae: see its README
REVIEWS_240_SHA256 = "27a6026c70771385cd14160abb1a2c5cee1749d7db3507c5abf815e555055027"  # reviews_csv, by 881aaae


def _tallies_match_a_recount(workspace) -> None:
    with workspace.catalog() as db:
        kept = db.execute("SELECT * FROM tallies WHERE n != 0 ORDER BY 1, 2, 3, 4").fetchall()
        counted = db.execute(f"SELECT * FROM ({RECOUNT}) ORDER BY 1, 2, 3, 4").fetchall()
    assert [tuple(r) for r in kept] == [tuple(r) for r in counted]


def test_a_workspace_made_by_older_code_upgrades_in_place(workspace):
    shutil.copytree(OLD_WORKSPACE, workspace.root, ignore=shutil.ignore_patterns("photos.json", "reviews.json", "README.md"))
    assert sqlite3.connect(workspace.catalog_path).execute("PRAGMA user_version").fetchone()[0] == 1
    for name in ("photos", "reviews"):
        before = json.loads((OLD_WORKSPACE / f"{name}.json").read_text())  # `dataset show` by the old code
        shown = run_cli("dataset", "show", name, "--format", "json")
        assert shown.returncode == 0, shown.stderr
        now = json.loads(shown.stdout)
        for key in ("rows", "columns", "classes", "media", "failed", "preview"):
            assert now[key] == before[key], key
    assert sqlite3.connect(workspace.catalog_path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    _tallies_match_a_recount(workspace)
    old = load_snapshot(workspace, "reviews-v1")  # format 1: its lists were in the manifest
    assert old.manifest.invalid_rows == 0 and list(old.invalid_rows()) == [] and old.manifest.rows == 7
    snap = create_snapshot(workspace, "photos", name="photos-v1", type="image-classification", input_column="image",
                           labels={"colour": "colour"}, max_invalid=0.5)
    assert snap.manifest.sha256 == "26209744136f60bb1a2dca43b384bed03066d75833eba3cc150348b9f82be3e9"  # as 881aaae made
    assert [r["reason"].split(":")[0] for r in snap.invalid_rows()] == ["missing_file", "not_an_image"]
    set_value(workspace, "photos", 1, "colour", "cool")  # and it goes on counting
    assert summary(workspace, "photos")["classes"]["colour"] == {"cool": 3, "warm": 2}
    _tallies_match_a_recount(workspace)


def test_counts_follow_every_kind_of_change(workspace, tmp_path, reviews_csv):
    import_csv(workspace, reviews_csv, "reviews")
    _tallies_match_a_recount(workspace)
    set_value(workspace, "reviews", 1, "sentiment", "neutral")
    set_value(workspace, "reviews", 2, "long", "")
    set_value(workspace, "reviews", 2, "text", "edited, labels the same")
    delete_rows(workspace, "reviews", [3, 4, 5])
    _tallies_match_a_recount(workspace)
    more = tmp_path / "more.csv"
    pd.DataFrame({"text": ["one more", "and another"], "sentiment": ["Positive", "negative"],
                  "long": ["no", ""], "movie": ["x", "y"]}).to_csv(more, index=False)
    add_rows(workspace, "reviews", read_table(more))
    with workspace.catalog() as db:  # a restore (as an undo will do)
        db.execute("UPDATE dataset_rows SET deleted = 0 WHERE row = 4")
    _tallies_match_a_recount(workspace)
    counts = summary(workspace, "reviews")
    assert counts["rows"] == 240 - 2 + 2 and counts["classes"]["sentiment"]["neutral"] == 1
    # images: statuses change as fetches succeed or fail, deleted rows stop counting
    Image.new("RGB", (4, 4), "red").save(tmp_path / "red.png")
    images = tmp_path / "images.csv"
    pd.DataFrame({"image": ["red.png", "gone.png", "red.png", ""], "kind": ["a", "b", "a", "b"]}).to_csv(images,
                                                                                                      index=False)
    table = read_table(images)
    import_dataset(workspace, "images", table, infer_columns(table, {"image": "image", "kind": "label"}))
    _tallies_match_a_recount(workspace)
    fetch_media(workspace, "images")
    delete_rows(workspace, "images", [3])
    _tallies_match_a_recount(workspace)
    assert summary(workspace, "images")["media"] == {"missing_file": 1, "ok": 1}
    shown = json.loads(run_cli("dataset", "show", "images", "--failed", "--format", "json").stdout)
    assert shown["failed_total"] == 1 and [f["row"] for f in shown["failed"]] == [2]


@pytest.mark.parametrize("chunk_rows", [7, 50_000])
def test_chunked_snapshots_are_the_bytes_one_pass_made(workspace, reviews_csv, chunk_rows):
    import_csv(workspace, reviews_csv, "reviews")
    snap = create_snapshot(workspace, "reviews", name="reviews", input_column="text",
                           labels={"sentiment": "sentiment", "long": "long"}, chunk_rows=chunk_rows)
    assert snap.manifest.sha256 == REVIEWS_240_SHA256  # pyarrow's version is in the file: the lock pins it


def test_row_groups_over_many_chunks_match_one_write(workspace, reviews_csv, monkeypatch, tmp_path):
    """Past ROW_GROUP_ROWS a snapshot is written a group at a time: the file is the one pandas writes at once."""
    monkeypatch.setattr(snapshot_module, "ROW_GROUP_ROWS", 64)
    import_csv(workspace, reviews_csv, "reviews")
    snap = create_snapshot(workspace, "reviews", name="reviews", input_column="text",
                           labels={"sentiment": "sentiment", "long": "long"}, chunk_rows=50)
    frame = snap.frame()
    frame.to_parquet(tmp_path / "once.parquet", index=False, row_group_size=64)
    assert (snap.path / "data.parquet").read_bytes() == (tmp_path / "once.parquet").read_bytes()
    assert frame["row"].tolist() == list(range(1, 241))


def test_import_streams_samples_types_and_merges_labels_from_every_row(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "SAMPLE_ROWS", 100)
    monkeypatch.setattr(ingest, "MAX_SPELLINGS", 3)  # the label column is counted again, over the whole file
    path = tmp_path / "big.csv"
    labels = ["spam", "ham"] * 150 + ["SPAM", " ham", "Eggs", "eggs", "eggs", ""]  # variants only past the sample
    pd.DataFrame({"text": [f"message number {i}" for i in range(len(labels))], "kind": labels}).to_csv(path, index=False)
    table = read_table(path)
    assert table.count == 306 and len(table.sample) == 100
    columns = {c.name: c for c in infer_columns(table)}
    assert columns["kind"].type == "label" and columns["kind"].reason.endswith(", in a sample of the first 100 rows")
    notes = import_dataset(workspace, "big", table, list(columns.values()))
    assert "column 'kind': 'SPAM' (1 rows) merged into 'spam' (they differ only in case)" in notes
    assert "column 'kind': 'Eggs' (1 rows) merged into 'eggs' (they differ only in case)" in notes
    assert "column 'kind': 1 labels had stray whitespace, removed" in notes
    assert summary(workspace, "big")["classes"]["kind"] == {"ham": 151, "spam": 151, "eggs": 3}


def test_a_snapshot_reads_inputs_by_position_from_a_memory_mapped_copy(workspace, reviews_snapshot):
    """What training holds per row is its labels and position; inputs are read a batch at a time."""
    frame = reviews_snapshot.frame()
    labels = reviews_snapshot.labels()
    assert "input" not in labels and labels["position"].tolist() == list(range(240))
    pd.testing.assert_frame_equal(labels.drop(columns="position"), frame.drop(columns="input"))
    rows = [239, 0, 17, 17, 120]
    assert reviews_snapshot.inputs(rows) == frame["input"].iloc[rows].tolist()
    copy, = (workspace.root / "cache" / "inputs").glob("*.arrow")
    stamp = copy.stat().st_mtime_ns
    assert load_snapshot(workspace, "reviews").inputs([5]) == [frame["input"][5]] and copy.stat().st_mtime_ns == stamp
    hashes = reviews_snapshot.input_hashes()
    assert len(hashes) == 240 and len(set(hashes.tolist())) == frame["input"].nunique()
