import json
import os
import stat

import pandas as pd
import pytest

from headsmith.data.snapshot import create_snapshot, list_snapshots, load_snapshot
from headsmith.errors import SnapshotError

from conftest import run_cli


def test_snapshot_manifest_counts_and_hash(workspace, reviews_snapshot, reviews_csv):
    m = reviews_snapshot.manifest
    assert m.rows == 240 and m.type == "text-classification" and m.input_column == "text"
    assert m.heads["sentiment"].classes == ["negative", "positive"]
    assert m.heads["sentiment"].counts == {"negative": 120, "positive": 120}
    assert sum(m.heads["long"].counts.values()) == 120  # every other row leaves `long` unlabelled
    manifest = json.loads((reviews_snapshot.path / "manifest.json").read_text())
    assert manifest["sha256"].startswith(manifest["id"]) and len(manifest["sha256"]) == 64
    frame = load_snapshot(workspace, "reviews").frame()
    assert frame["long"].isna().sum() == 120 and frame["row"].iloc[0] == 2
    assert [s["name"] for s in list_snapshots(workspace)] == ["reviews"]
    assert load_snapshot(workspace, m.id).manifest.name == "reviews"


def test_snapshot_files_are_read_only_and_verified(workspace, reviews_snapshot):
    data = reviews_snapshot.path / "data.parquet"
    assert not os.stat(data).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    os.chmod(data, stat.S_IWUSR | stat.S_IRUSR)
    frame = pd.read_parquet(data)
    frame.loc[0, "sentiment"] = "positive" if frame.loc[0, "sentiment"] == "negative" else "negative"
    frame.to_parquet(data, index=False)
    with pytest.raises(SnapshotError, match="does not match its sha256"):
        load_snapshot(workspace, "reviews")


def test_snapshot_names_are_unique_and_safe(workspace, reviews_snapshot, reviews_csv):
    with pytest.raises(SnapshotError, match="already exists"):
        create_snapshot(workspace, reviews_csv, name="reviews", input_column="text", labels={"sentiment": "sentiment"})
    with pytest.raises(SnapshotError, match="not allowed"):
        create_snapshot(workspace, reviews_csv, name="../x", input_column="text", labels={"sentiment": "sentiment"})


def test_invalid_data_criterion(workspace, tmp_path):
    rows = [("a fine film", "positive"), ("", "negative"), ("a dull film", "negative"), ("   ", "positive")] * 5
    path = tmp_path / "small.csv"
    pd.DataFrame(rows, columns=["text", "sentiment"]).to_csv(path, index=False)
    with pytest.raises(SnapshotError) as refused:
        create_snapshot(workspace, path, name="small", input_column="text", labels={"sentiment": "sentiment"})
    assert "10 of 20 rows (50.0%) are invalid" in str(refused.value) and "small.csv:3: empty text" in str(refused.value)
    assert list_snapshots(workspace) == []
    snap = create_snapshot(workspace, path, name="small", input_column="text", labels={"sentiment": "sentiment"},
                           max_invalid=0.5)
    assert snap.manifest.rows == 10 and snap.manifest.invalid_rows[0] == {"row": 3, "reason": "empty text"}


@pytest.mark.parametrize("labels, message", [
    ({"sentiment": "label"}, "label column 'label' for head 'sentiment' is not in reviews.csv (columns: text, "
                             "sentiment, movie, long)"),
    ({"sentiment": "movie_x", "long": "long"}, "pass --label sentiment=COLUMN"),
])
def test_missing_label_column(workspace, reviews_csv, labels, message):
    with pytest.raises(SnapshotError) as e:
        create_snapshot(workspace, reviews_csv, name="x", input_column="text", labels=labels)
    assert message in str(e.value)


def test_head_with_one_class(workspace, tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "spam": ["no", " no", "no "]}).to_csv(path, index=False)
    with pytest.raises(SnapshotError, match="head 'spam' \\(column 'spam' of one.csv\\) has only the class 'no'; a "
                                            "head needs at least two mutually exclusive classes"):
        create_snapshot(workspace, path, name="one", input_column="text", labels={"spam": "spam"})


def test_cli_snapshot_create_show_and_errors(workspace, reviews_csv):
    made = run_cli("snapshot", "create", str(reviews_csv), "--name", "cli", "--input", "text",
                   "--label", "sentiment=sentiment")
    assert made.returncode == 0, made.stderr
    assert "negative=120, positive=120" in made.stdout
    shown = run_cli("snapshot", "show", "cli", "--format", "json")
    assert json.loads(shown.stdout)["heads"]["sentiment"]["counts"] == {"negative": 120, "positive": 120}
    bad = run_cli("snapshot", "create", str(reviews_csv), "--name", "bad", "--input", "txt", "--label", "s=sentiment")
    assert bad.returncode == 2 and "input column 'txt' is not in reviews.csv" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    missing = run_cli("snapshot", "show", "nope")
    assert missing.returncode == 2 and "no snapshot named 'nope'" in missing.stdout
