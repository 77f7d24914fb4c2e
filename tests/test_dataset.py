"""Importing CSVs: column types, images over real HTTP, every bad input, edits with history, resume after kill -9."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest

from headsmith.data.dataset import (add_rows, delete_dataset, delete_rows, fetch_media, get_dataset, history,
                                    import_dataset, list_datasets, media_counts, rows_frame, set_value)
from headsmith.data.ingest import infer_columns, read_table
from headsmith.data.media import BlobStore, MediaFetcher
from headsmith.data.snapshot import create_snapshot, list_snapshots, load_snapshot
from headsmith.errors import DatasetError

from conftest import HEADSMITH, import_csv, run_cli
from image_server import SAMPLES

BAD_URLS = {  # path -> (status, words the detail must contain)
    "/missing.jpg": ("http_error", "http 404"),
    "/slow.jpg": ("timeout", "no answer within 1.5 s"),
    "/page.jpg": ("not_an_image", "the server sent text/html, not an image"),
    "/truncated.jpg": ("corrupt", "truncated or corrupt image"),
    "/50mp.jpg": ("too_many_pixels", "8660x5774 (50.0 MP"),
    "/bomb.png": ("too_many_pixels", "decompression bomb"),
}


def _fetcher(workspace, **options):
    return MediaFetcher(BlobStore(workspace.blobs_dir), **{"timeout": 1.5, "retries": 1, "backoff": 0.05, **options})


@pytest.fixture
def images_csv(tmp_path, image_server):
    """Real photos and digits over HTTP, one of each failure, a file:// URL and a relative local path."""
    shutil.copy(SAMPLES / "coffee.png", tmp_path / "local-coffee.png")
    rows = [(f"{image_server.url}/photo/{p}", "yes" if p == "chelsea.png" else "no") for p in
            ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    rows += [(f"{image_server.url}/digit/{i}.png", "no") for i in range(10)]
    rows += [(f"{image_server.url}{path}", "no") for path in BAD_URLS]
    rows += [(f"{image_server.url}/flaky.jpg", "no"), (f"file://{SAMPLES / 'chelsea.png'}", "yes"),
             ("local-coffee.png", "no"), (f"{image_server.url}/photo/chelsea.png", "yes")]
    path = tmp_path / "images.csv"
    pd.DataFrame(rows, columns=["url", "cat"]).assign(id=[f"img{i:03d}" for i in range(len(rows))]).to_csv(
        path, index=False)
    return path


def test_image_import_statuses(workspace, images_csv, image_server):
    table = read_table(images_csv)
    columns = {c.name: c for c in infer_columns(table)}
    assert (columns["url"].type, columns["url"].reason) == ("image", "92% of values are http(s) URLs mostly ending in .png")
    assert columns["cat"].type == "label" and columns["id"].type == "ignore"
    import_dataset(workspace, "pets", table, list(columns.values()))
    counts = fetch_media(workspace, "pets", _fetcher(workspace))
    listing = rows_frame(workspace, "pets")[["url", "url:status", "url:detail"]].to_string()
    assert counts["ok"] == 18 and sum(counts.values()) == 24, listing
    frame = rows_frame(workspace, "pets").set_index("url")
    for path, (status, words) in BAD_URLS.items():
        row = frame.loc[f"{image_server.url}{path}"]
        assert row["url:status"] == status and words in row["url:detail"], (path, row["url:detail"])
    assert frame.loc[f"{image_server.url}/flaky.jpg", "url:status"] == "ok"  # retried after a 503
    assert frame.loc["local-coffee.png", "url:detail"] == "PNG 600x400"
    # the same photo three times (two URLs and a file://) is stored once: 18 ok cells, 14 different images
    chelsea = frame[frame["cat"] == "yes"]["url:sha256"]
    assert chelsea.nunique() == 1 and len([p for p in workspace.blobs_dir.rglob("*") if p.is_file()]) == 14
    shown = json.loads(run_cli("dataset", "show", "pets", "--failed", "--format", "json").stdout)
    assert {f["status"] for f in shown["failed"]} == {s for s, _ in BAD_URLS.values()}
    assert shown["classes"]["cat"] == {"no": 21, "yes": 3}


def test_refetch_only_what_failed(workspace, images_csv, image_server):
    import_csv(workspace, images_csv, "pets")  # the default 10 s timeout waits for /slow.jpg
    before = image_server.hits.copy()
    fetch_media(workspace, "pets", _fetcher(workspace, retries=0))
    again = image_server.hits - before
    assert set(again) == set(BAD_URLS) - {"/slow.jpg"}  # only what failed is asked for again


def test_image_snapshot_reads_blobs(workspace, images_csv):
    import_csv(workspace, images_csv, "pets")
    snap = create_snapshot(workspace, "pets", name="pets", type="image-classification", input_column="url",
                           labels={"cat": "cat"}, max_invalid=0.3)
    assert snap.manifest.rows == 19 and snap.manifest.invalid_rows == 5  # the default timeout waits for /slow
    assert {r["reason"].split(":")[0] for r in snap.invalid_rows()} == {
        s for p, (s, _) in BAD_URLS.items() if p != "/slow.jpg"}
    frame = snap.frame()
    images = snap.load_inputs(frame["input"].tolist()[:2])
    assert images[0].size == (451, 300) and images[0].mode == "RGB"  # chelsea.png
    with pytest.raises(Exception, match="above the invalid data criterion of 5.0%"):
        create_snapshot(workspace, "pets", name="strict", type="image-classification", input_column="url",
                        labels={"cat": "cat"})


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"text,label\n", "has a header but no data rows"),
    (b"text,label,text\na,b,c\n", "the header names 'text' more than once"),
    (b"text,label\na,b\nc,d,e\n", "images.csv:3: this row has 3 fields but the header has 2"),
    (b"text,label\n\"caf\xe9 au lait\",b\n", "not UTF-8: line 2 has byte b'\\xe9' (offset 15)"),
    (b"text,label\n" + b"a" * 10_000_001 + b",b\n", "images.csv:2: column 'text' holds 10,000,001 characters"),
])
def test_bad_csv_files(tmp_path, content, message):
    path = tmp_path / "images.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as e:
        read_table(path)
    assert message in str(e.value)


def test_csv_dialects_bom_quoted_newlines_and_encodings(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_bytes("\ufefftext;label\n\"two\nlines; one cell\";yes\nplain;no\n".encode())
    table = read_table(path)
    assert table.columns == ["text", "label"] and table.sample == [(2, ["two\nlines; one cell", "yes"]), (4, ["plain", "no"])]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncafé crème,yes\n".encode("cp1252"))
    assert read_table(latin, encoding="cp1252").sample[0][1][0] == "café crème"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_csvs_with_a_byte_order_mark_are_read(tmp_path, encoding):
    """Excel's "Unicode text" and other Windows tools write UTF-16 with a byte-order mark: the mark says which."""
    path = tmp_path / "wide.csv"
    text = "text,label\ncafé crème 🍵,yes\nplain,no\n"
    path.write_bytes(("" if encoding in ("utf-16", "utf-32") else "\ufeff").encode(encoding) + text.encode(encoding))
    table = read_table(path)
    assert table.columns == ["text", "label"] and table.sample == [(2, ["café crème 🍵", "yes"]), (3, ["plain", "no"])]


def test_labels_whitespace_case_empty_and_one_class(workspace, tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"text": [f"review number {i}" for i in range(12)],
                  "sentiment": ["positive", " positive", "Positive", "negative", "negative ", "", "positive",
                                "negative", "positive", "negative", "positive", "negative"],
                  "lang": ["en"] * 12}).to_csv(path, index=False)
    table = read_table(path)
    notes = import_dataset(workspace, "labels", table, infer_columns(table, {"lang": "label"}))
    assert "column 'sentiment': 'Positive' (1 rows) merged into 'positive' (they differ only in case)" in notes
    assert "column 'sentiment': 2 labels had stray whitespace, removed" in notes
    assert "column 'sentiment': 1 rows have no label (they leave this head unlabelled)" in notes
    assert any("column 'lang': only one class ('en')" in n for n in notes)
    assert rows_frame(workspace, "labels")["sentiment"].value_counts().to_dict() == {"positive": 6, "negative": 5}


@pytest.mark.parametrize("name", ["a/b", "..", "../up", ".hidden", ""])
def test_dataset_names(workspace, reviews_csv, name):
    table = read_table(reviews_csv)
    with pytest.raises(DatasetError, match="is not allowed"):
        import_dataset(workspace, name, table, infer_columns(table))


def test_edits_are_kept_in_history(workspace, reviews_csv, tmp_path, image_server):
    import_csv(workspace, reviews_csv, "reviews")
    assert set_value(workspace, "reviews", 5, "sentiment", " positive ") == ("negative", "positive")
    delete_rows(workspace, "reviews", [1, 2])
    with pytest.raises(DatasetError, match="dataset 'reviews' has no row 2 \\(it was deleted\\)"):
        delete_rows(workspace, "reviews", [3, 2])
    assert rows_frame(workspace, "reviews")["row"].iloc[0] == 3  # the failed delete removed nothing
    more = tmp_path / "more.csv"
    pd.read_csv(reviews_csv).head(4).to_csv(more, index=False)
    assert add_rows(workspace, "reviews", read_table(more))[0] == 4
    assert rows_frame(workspace, "reviews")["row"].tolist()[-4:] == [241, 242, 243, 244]
    assert [e["action"] for e in history(workspace, "reviews")] == ["import", "set", "delete_rows", "add_rows"]
    assert history(workspace, "reviews")[1] == {**history(workspace, "reviews")[1], "row": 5, "old": "negative",
                                                "new": "positive"}
    with pytest.raises(DatasetError, match="columns \\['text'\\] of dataset 'reviews' are missing"):
        bad = tmp_path / "bad.csv"
        pd.DataFrame({"sentiment": ["positive"], "movie": ["x"], "long": ["yes"]}).to_csv(bad, index=False)
        add_rows(workspace, "reviews", read_table(bad))
    assert [d["name"] for d in list_datasets(workspace)] == ["reviews"] and list_datasets(workspace)[0]["rows"] == 242
    delete_dataset(workspace, "reviews")
    assert list_datasets(workspace) == []


def test_cli_import_needs_confirmation_without_a_terminal(workspace, reviews_csv):
    result = run_cli("dataset", "import", str(reviews_csv), "--name", "r")
    assert result.returncode == 2 and "confirm the column types with --yes" in result.stderr
    assert "│ sentiment │ label │" in result.stdout  # the inferred mapping was shown first
    assert list_datasets(workspace) == []
    typed = run_cli("dataset", "import", str(reviews_csv), "--name", "r", "--yes", "--column", "movie=ignore")
    assert typed.returncode == 0 and get_dataset(workspace, "r").column("movie").type == "ignore"
    # the same command again (a re-run make target): the same file and types resume instead of failing
    again = run_cli("dataset", "import", str(reviews_csv), "--name", "r", "--yes", "--column", "movie=ignore")
    assert again.returncode == 0 and "imported from this file already" in again.stdout
    other = run_cli("dataset", "import", str(reviews_csv), "--name", "r", "--yes", "--column", "movie=text")
    assert other.returncode == 2 and "a dataset named 'r' already exists" in other.stderr


def test_kill_during_import_then_resume_2000_rows(workspace, tmp_path, image_server):
    """2,000 image URLs served locally, every 100th one broken in one of the ways above; killed half way."""
    bad = list(BAD_URLS)
    urls = [f"{image_server.url}{bad[(i // 100) % len(bad)]}" if i % 100 == 99 else f"{image_server.url}/latency/{i}.png"
            for i in range(2000)]
    path = tmp_path / "big.csv"
    pd.DataFrame({"url": urls, "digit": [str(i % 10) for i in range(2000)]}).to_csv(path, index=False)
    args = [HEADSMITH, "dataset", "import", str(path), "--name", "big", "--yes", "--timeout", "2", "--retries", "0"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.time() + 120
    while time.time() < deadline and media_counts_or_none(workspace, "big").get("ok", 0) < 500:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = media_counts_or_none(workspace, "big")
    assert 500 <= done.get("ok", 0) < 1980 and done.get("pending", 0) > 0, done
    hits_at_kill = image_server.hits.copy()
    resumed = run_cli(*args[1:])
    assert resumed.returncode == 0 and "fetching what is still missing" in resumed.stdout, resumed.stdout
    frame = rows_frame(workspace, "big")
    assert len(frame) == 2000 and frame["row"].tolist() == list(range(1, 2001))  # nothing lost, nothing twice
    for path_, (status, words) in BAD_URLS.items():
        rows = frame[frame["url"] == f"{image_server.url}{path_}"]
        assert len(rows) and (rows["url:status"] == status).all(), (path_, rows["url:detail"].tolist())
    assert media_counts(workspace, "big")["ok"] == 1980
    refetched = [p for p in hits_at_kill if p.startswith("/latency/") and image_server.hits[p] > hits_at_kill[p]]
    assert len(refetched) <= 16 + 25  # at most those in flight or not yet committed when it was killed
    snap = create_snapshot(workspace, "big", name="big", type="image-classification", input_column="url",
                           labels={"digit": "digit"})
    assert snap.manifest.rows == 1980 and snap.manifest.invalid_rows == 20


def media_counts_or_none(workspace, name):
    try:
        return media_counts(workspace, name)
    except DatasetError:
        return {}


def _kill_when(args: list[str], ready, timeout: float = 60) -> bool:
    """Start the command and kill -9 it once `ready()` holds. True when the kill landed while it was running with
    `ready()` true (not after it had finished, nor at the timeout)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline, reached = time.time() + timeout, False
    while time.time() < deadline and process.poll() is None and not reached:
        reached = ready()
        time.sleep(0 if reached else 0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return reached and process.returncode == -signal.SIGKILL


def test_kill_during_import_and_snapshot_leaves_old_or_new(workspace, reviews, tmp_path):
    path = tmp_path / "all.csv"
    big = pd.concat([reviews] * 8)  # ~100k rows
    big.to_csv(path, index=False)
    importing = [HEADSMITH, "dataset", "import", str(path), "--name", "all", "--yes", "--column", "movie=ignore"]
    wal = workspace.root / "catalog.sqlite-wal"
    for _ in range(3):  # the kill must land while rows are being written; one that lands after the commit is retried
        assert _kill_when(importing, lambda: wal.exists() and wal.stat().st_size > 2_000_000)
        if not list_datasets(workspace):
            break  # killed mid-import: no half dataset is visible
        assert len(rows_frame(workspace, "all")) == len(big)  # killed after its commit: every row
        delete_dataset(workspace, "all")
    else:
        pytest.fail("three kills all landed after the import's commit")
    assert run_cli(*importing[1:]).returncode == 0
    assert len(rows_frame(workspace, "all")) == len(big)

    snapshotting = [HEADSMITH, "snapshot", "create", "all", "--name", "all", "--input", "text", "--label",
                    "sentiment=sentiment", "--max-invalid", "1"]
    assert _kill_when(snapshotting, lambda: any(workspace.snapshots_dir.glob(".staging-*")))  # while writing
    assert list_snapshots(workspace) == []
    assert not [p for p in workspace.snapshots_dir.iterdir() if not p.name.startswith(".staging-")]
    redo = run_cli(*snapshotting[1:])
    assert redo.returncode == 0, redo.stdout
    assert load_snapshot(workspace, "all").manifest.rows == len(big)


def _answer_prompt(args: list[str], answer: str) -> str:
    """Run the CLI on a pseudo-terminal, as a person at a shell would, and answer its question."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=os.environ)
    os.close(follower)
    seen, answered = b"", False
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the program closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Import with these column types?" in seen:
            os.write(leader, answer.encode() + b"\n")
            answered = True
    process.wait(timeout=60)
    os.close(leader)
    return re.sub(r"\x1b\[[0-9;]*m", "", seen.decode(errors="replace"))  # without the terminal's colours


def test_interactive_confirmation(workspace, reviews_csv):
    declined = _answer_prompt([HEADSMITH, "dataset", "import", str(reviews_csv), "--name", "r"], "n")
    assert "not imported; change types with --column COL=TYPE" in declined and list_datasets(workspace) == []
    accepted = _answer_prompt([HEADSMITH, "dataset", "import", str(reviews_csv), "--name", "r"], "y")
    assert "dataset r: 240 rows imported" in accepted
    assert list_datasets(workspace)[0]["rows"] == 240


def test_fsspec_scheme_and_missing_blob_refetch(workspace, tmp_path):
    import fsspec

    with fsspec.open("memory://bucket/cat.png", "wb") as f:
        f.write((SAMPLES / "chelsea.png").read_bytes())
    fetcher = _fetcher(workspace)
    assert fetcher.fetch("memory://bucket/cat.png").detail == "PNG 451x300"
    assert fetcher.fetch("nosuchscheme://bucket/cat.png").status == "unsupported"
    path = tmp_path / "mem.csv"
    pd.DataFrame({"url": ["memory://bucket/cat.png"] * 3, "cat": ["yes", "no", "yes"]}).to_csv(path, index=False)
    table = read_table(path)
    import_dataset(workspace, "mem", table, infer_columns(table, {"url": "image", "cat": "label"}))
    assert fetch_media(workspace, "mem", fetcher) == {"ok": 3}
    sha = rows_frame(workspace, "mem")["url:sha256"].iloc[0]
    BlobStore(workspace.blobs_dir).path(sha).unlink()  # a blob lost from the store is fetched again
    assert fetch_media(workspace, "mem", fetcher) == {"ok": 3}
    assert BlobStore(workspace.blobs_dir).path(sha).is_file()


def test_add_rows_reads_relative_image_paths_from_its_own_folder(workspace, tmp_path):
    """Two folders, each with its own `photo.png` and a CSV naming it by a relative path: each row gets the photo
    beside its own CSV."""
    from PIL import Image

    blobs = {}
    for folder, colour in (("first", "red"), ("second", "blue")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8), colour).save(tmp_path / folder / "photo.png")
        blobs[folder] = hashlib.sha256((tmp_path / folder / "photo.png").read_bytes()).hexdigest()
        (tmp_path / folder / "rows.csv").write_text(f"image,colour\nphoto.png,{colour}\n")
    table = read_table(tmp_path / "first" / "rows.csv")
    import_dataset(workspace, "photos", table, infer_columns(table, {"image": "image", "colour": "label"}))
    add_rows(workspace, "photos", read_table(tmp_path / "second" / "rows.csv"))
    assert fetch_media(workspace, "photos")["ok"] == 2
    frame = rows_frame(workspace, "photos").set_index("colour")
    assert frame.loc["red", "image:sha256"] == blobs["first"]
    assert frame.loc["blue", "image:sha256"] == blobs["second"]


def test_a_malformed_response_is_that_rows_status_not_an_aborted_import(workspace, image_server, tmp_path):
    from image_server import RAW

    rows = [f"{image_server.url}{path}" for path in RAW] + [f"{image_server.url}/photo/coffee.png"]
    (tmp_path / "odd.csv").write_text("url,cat\n" + "".join(f"{url},no\n" for url in rows))
    import_csv(workspace, tmp_path / "odd.csv", "odd")
    counts = fetch_media(workspace, "odd", _fetcher(workspace, retries=0))
    frame = rows_frame(workspace, "odd").set_index("url")
    assert counts["ok"] == 1 and frame.loc[rows[-1], "url:status"] == "ok"
    for url in rows[:-1]:
        assert frame.loc[url, "url:status"] == "bad_response", frame.loc[url].to_dict()
    assert "Content-Length 'lots'" in frame.loc[rows[0], "url:detail"]
