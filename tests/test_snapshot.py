import json
import os
import stat

import pandas as pd
import pytest

from headsmith.data.dataset import delete_rows, set_value
from headsmith.data.snapshot import create_snapshot, diff_snapshots, list_snapshots, load_snapshot
from headsmith.errors import HeadsmithError, SnapshotError

from conftest import import_csv, run_cli, snapshot_csv


def test_snapshot_manifest_counts_and_hash(workspace, reviews_snapshot):
    m = reviews_snapshot.manifest
    assert m.rows == 240 and m.type == "text-classification" and m.input_column == "text"
    assert m.heads["sentiment"].classes == ["negative", "positive"]
    assert m.heads["sentiment"].counts == {"negative": 120, "positive": 120}
    assert sum(m.heads["long"].counts.values()) == 120  # every other row leaves `long` unlabelled
    assert m.source["dataset"] == "reviews"
    manifest = json.loads((reviews_snapshot.path / "manifest.json").read_text())
    assert manifest["sha256"].startswith(manifest["id"]) and len(manifest["sha256"]) == 64
    frame = load_snapshot(workspace, "reviews").frame()
    assert frame["long"].isna().sum() == 120 and frame["row"].tolist() == list(range(1, 241))
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


def test_later_edits_never_change_a_snapshot_and_diff_counts_them(workspace, reviews_snapshot):
    before = (reviews_snapshot.path / "data.parquet").read_bytes()
    first = load_snapshot(workspace, "reviews").frame()
    row = int(first.loc[first["sentiment"] == "negative", "row"].iloc[10])  # not among the rows deleted below
    set_value(workspace, "reviews", row, "sentiment", "positive")
    delete_rows(workspace, "reviews", [1, 2, 3])
    after = create_snapshot(workspace, "reviews", name="reviews-v2", input_column="text",
                            labels={"sentiment": "sentiment", "long": "long"})
    assert (reviews_snapshot.path / "data.parquet").read_bytes() == before
    assert load_snapshot(workspace, "reviews").manifest.rows == 240 and after.manifest.rows == 237
    diff = diff_snapshots(load_snapshot(workspace, "reviews"), after)
    assert (diff["added"], diff["removed"], diff["relabelled"]) == (0, 3, 1)
    removed = first[first["row"].isin([1, 2, 3])]["sentiment"].value_counts().to_dict()
    assert diff["heads"]["sentiment"]["negative"] == (120, 120 - 1 - removed.get("negative", 0))
    shown = run_cli("snapshot", "diff", "reviews", "reviews-v2", "--format", "json")
    assert json.loads(shown.stdout)["removed"] == 3


def test_snapshot_names_are_unique_and_safe(workspace, reviews_snapshot):
    with pytest.raises(SnapshotError, match="already exists"):
        create_snapshot(workspace, "reviews", name="reviews", input_column="text", labels={"sentiment": "sentiment"})
    with pytest.raises(HeadsmithError, match="not allowed"):
        create_snapshot(workspace, "reviews", name="../x", input_column="text", labels={"sentiment": "sentiment"})


def test_invalid_data_criterion(workspace, tmp_path):
    rows = [("a fine film", "positive"), ("", "negative"), ("a dull film", "negative"), ("   ", "positive")] * 5
    path = tmp_path / "small.csv"
    pd.DataFrame(rows, columns=["text", "sentiment"]).to_csv(path, index=False)
    import_csv(workspace, path, "small", text="text")
    with pytest.raises(SnapshotError) as refused:
        create_snapshot(workspace, "small", name="small", input_column="text", labels={"sentiment": "sentiment"})
    assert "10 of 20 rows (50.0%) are invalid" in str(refused.value)
    assert "row 2 (line 3): empty text" in str(refused.value)
    assert list_snapshots(workspace) == []
    snap = create_snapshot(workspace, "small", name="small", input_column="text", labels={"sentiment": "sentiment"},
                           max_invalid=0.5)
    assert snap.manifest.rows == 10 and snap.manifest.invalid_rows == 10
    assert next(snap.invalid_rows()) == {"row": 2, "line": 3, "reason": "empty text"}


def test_token_limit_of_a_named_backbone(workspace, tmp_path):
    path = tmp_path / "long.csv"
    pd.DataFrame({"text": ["short and sweet", "word " * 300] * 10, "label": ["a", "b"] * 10}).to_csv(path, index=False)
    import_csv(workspace, path, "long", text="text")
    with pytest.raises(SnapshotError, match="row 2 \\(line 3\\): 302 tokens, over the 256-token limit of "
                                            "all-MiniLM-L6-v2"):
        create_snapshot(workspace, "long", name="long", input_column="text", labels={"x": "label"},
                        backbone="all-MiniLM-L6-v2", max_tokens=256)


def test_conflicting_duplicates_are_reported(workspace, tmp_path):
    path = tmp_path / "dupes.csv"
    pd.DataFrame({"text": ["great", "great", "awful", "fine", "fine"],
                  "sentiment": ["positive", "negative", "negative", "positive", "positive"]}).to_csv(path, index=False)
    snap = snapshot_csv(workspace, path, "dupes", "text", {"sentiment": "sentiment"})
    assert snap.manifest.leakage["conflicting_duplicates"] == 1
    assert list(snap.conflicting_duplicates()) == [{"head": "sentiment", "rows": [1, 2], "labels": ["negative", "positive"]}]
    shown = run_cli("snapshot", "show", "dupes")
    assert "head sentiment: rows [1, 2] say ['negative', 'positive']" in shown.stdout


def test_wrong_column_types_and_one_class(workspace, tmp_path, reviews_snapshot):
    with pytest.raises(SnapshotError) as e:
        create_snapshot(workspace, "reviews", name="x", input_column="sentiment", labels={"s": "text"})
    assert "--input sentiment: a text-classification snapshot needs a text column, and 'sentiment' is label" in str(e.value)
    assert "--label s=text: 'text' is a text column, not a label column" in str(e.value)
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "spam": ["no", " no", "No "]}).to_csv(path, index=False)
    import_csv(workspace, path, "one", text="text", spam="label")
    with pytest.raises(SnapshotError, match="head 'spam' \\(column 'spam' of dataset 'one'\\) has only the class "
                                            "'no' in its valid rows; a head needs at least two"):
        create_snapshot(workspace, "one", name="one", input_column="text", labels={"spam": "spam"})


def test_cli_snapshot_create_show_and_errors(workspace, reviews_csv):
    imported = run_cli("dataset", "import", str(reviews_csv), "--name", "cli", "--yes")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    made = run_cli("snapshot", "create", "cli", "--name", "cli", "--input", "text", "--label", "sentiment=sentiment")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "negative=120, positive=120" in made.stdout
    shown = run_cli("snapshot", "show", "cli", "--format", "json")
    assert json.loads(shown.stdout)["heads"]["sentiment"]["counts"] == {"negative": 120, "positive": 120}
    bad = run_cli("snapshot", "create", "cli", "--name", "bad", "--input", "txt", "--label", "s=sentiment")
    assert bad.returncode == 2 and "dataset 'cli' has no column 'txt'" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    missing = run_cli("snapshot", "show", "nope")
    assert missing.returncode == 2 and "no snapshot named 'nope'" in missing.stderr


def test_text_base_example_labels_each_row_for_one_head(tmp_path):
    from headsmith.data.examples import text_base

    table = pd.read_csv(text_base(tmp_path / "text-base.csv"), keep_default_na=False)
    assert set(table["kind"]) == {"plot", "review", ""} and set(table["party"]) == {"Democratic", "Republican",
                                                                                    "Moderator", ""}
    assert ((table["kind"] == "") != (table["party"] == "")).all()  # exactly one head per row
    assert (table["kind"] == "plot").sum() == (table["kind"] == "review").sum() == 1097
