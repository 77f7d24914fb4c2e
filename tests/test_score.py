"""`headsmith score`: a big file scored in chunks into Parquet parts + a manifest, in input order, kept columns
carried through, bad rows marked rather than fatal; killed with kill -9 and run again, it goes on without losing or
repeating a row."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from headsmith.predictor import Predictor
from headsmith.scoring import score_file

from conftest import HEADSMITH, run_cli


@pytest.fixture
def package(base_package):
    """The session's trained text model (read-only: score only reads it)."""
    return base_package


@pytest.fixture
def backlog(reviews, tmp_path):
    """600 real reviews with an id and a time, three of them empty."""
    frame = reviews.head(600)[["text"]].reset_index(drop=True)
    frame.insert(0, "id", [f"post-{i}" for i in range(len(frame))])
    frame["created_at"] = pd.date_range("2026-11-01", periods=len(frame), freq="min").astype(str)
    frame.loc[[5, 77, 431], "text"] = ["", "   ", ""]
    path = tmp_path / "backlog.csv"
    frame.to_csv(path, index=False)
    return frame, path


def read_output(folder: Path) -> tuple[pd.DataFrame, dict]:
    manifest = json.loads((folder / "_manifest.json").read_text())
    parts = [pd.read_parquet(folder / part["file"]) for part in manifest["parts"]]
    return pd.concat(parts, ignore_index=True), manifest


def test_score_writes_every_row_in_order_with_the_scores_predict_gives(package, backlog, tmp_path):
    frame, path = backlog
    result = run_cli("score", str(package), str(path), "--out", str(tmp_path / "out"), "--keep", "id,created_at",
                     "--chunk-rows", "128")
    assert result.returncode == 0, result.stdout + result.stderr
    scored, manifest = read_output(tmp_path / "out")
    assert manifest["done"] and manifest["rows"] == 600 and len(manifest["parts"]) == 5
    assert scored["row"].tolist() == list(range(600)) and scored["id"].tolist() == frame["id"].tolist()
    assert scored["created_at"].tolist() == frame["created_at"].tolist()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out"), scored)  # the folder reads as one dataset
    assert scored.loc[[5, 77, 431], "status"].tolist() == ["empty"] * 3
    assert scored["sentiment:decision"].isna().sum() == 3 and (scored["status"] == "ok").sum() == 597
    ok = scored[scored["status"] == "ok"].head(40)
    predictor = Predictor(package)
    answers = predictor.predict(frame.loc[ok["row"], "text"].tolist())
    for (_, row), answer in zip(ok.iterrows(), answers):
        for head in ("sentiment", "long"):
            assert row[f"{head}:decision"] == answer[head]["decision"]
            for c in answer[head]["classes"]:
                assert row[f"{head}:score:{c['class']}"] == pytest.approx(c["score"], abs=1e-5)
    # The same rows as Parquet and as JSON Lines: the same output (the command's own scoring, in this process).
    for suffix in ("parquet", "jsonl"):
        other = tmp_path / f"backlog.{suffix}"
        frame.to_parquet(other, index=False) if suffix == "parquet" else frame.to_json(other, orient="records",
                                                                                     lines=True)
        score_file(predictor, str(other), tmp_path / suffix, "text", ["id"])
        same, _ = read_output(tmp_path / suffix)
        columns = [c for c in same.columns if ":score:" in c]
        pd.testing.assert_frame_equal(same[columns], scored[columns], atol=1e-5)
    # Another job into the same folder is refused; the same job again is already done.
    other = run_cli("score", str(package), str(path), "--out", str(tmp_path / "out"), "--chunk-rows", "64")
    assert other.returncode == 2 and "holds another scoring job" in other.stdout + other.stderr
    assert run_cli("score", str(package), str(path), "--out", str(tmp_path / "out"), "--keep", "id,created_at",
                   "--chunk-rows", "128").returncode == 0
    missing = run_cli("score", str(package), str(path), "--out", str(tmp_path / "x"), "--input", "body")
    assert missing.returncode == 2 and "body" in missing.stdout + missing.stderr


def test_a_killed_score_job_goes_on_without_losing_or_repeating_a_row(package, backlog, tmp_path):
    _, path = backlog
    args = [HEADSMITH, "score", str(package), str(path), "--out", str(tmp_path / "out"), "--keep", "id",
            "--chunk-rows", "10", "--batch-size", "1"]
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest_file, deadline = tmp_path / "out" / "_manifest.json", time.monotonic() + 300
    while time.monotonic() < deadline:
        parts = json.loads(manifest_file.read_text())["parts"] if manifest_file.exists() else []
        if len(parts) >= 3:
            break
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = json.loads(manifest_file.read_text())
    assert not killed_at["done"] and 3 <= len(killed_at["parts"]) < 60
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    scored, manifest = read_output(tmp_path / "out")
    assert manifest["done"] and manifest["parts"][:len(killed_at["parts"])] == killed_at["parts"]
    assert scored["row"].tolist() == list(range(600)) and scored["id"].tolist() == [f"post-{i}" for i in range(600)]
    score_file(Predictor(package), str(path), tmp_path / "straight", "text", ["id"], chunk_rows=10)  # not stopped
    expected, _ = read_output(tmp_path / "straight")
    columns = [c for c in expected.columns if ":score:" in c]
    pd.testing.assert_frame_equal(scored[columns], expected[columns], atol=1e-5)


def test_the_ray_engine_gives_the_local_output_and_goes_on_with_a_local_job(package, backlog, tmp_path):
    """A job stopped after two parts in this process (the manifest as a kill leaves it) is finished by a local Ray
    with two actors of one thread each: every row in order, the same statuses and decisions as the local job,
    scores within 1e-5, and the two parts written before kept as they were."""
    _, path = backlog
    score_file(Predictor(package), str(path), tmp_path / "local", "text", ["id", "created_at"], chunk_rows=128)
    expected, whole = read_output(tmp_path / "local")
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    half, parts = dict(whole), whole["parts"]
    half.update(parts=parts[:2], rows=parts[2]["first_row"], done=False)
    (tmp_path / "ray" / "_manifest.json").write_text(json.dumps(half))
    for late in parts[2:]:
        (tmp_path / "ray" / late["file"]).unlink()
    kept = {p["file"]: (tmp_path / "ray" / p["file"]).read_bytes() for p in parts[:2]}
    on_ray = run_cli("score", str(package), str(path), "--keep", "id,created_at", "--chunk-rows", "128", "--out",
                     str(tmp_path / "ray"), "--engine", "ray", "--workers", "2", "--threads-per-worker", "1")
    assert on_ray.returncode == 0, on_ray.stdout + on_ray.stderr
    scored, manifest = read_output(tmp_path / "ray")
    assert manifest["done"] and manifest["rows"] == 600 and len(manifest["parts"]) == 5
    assert all((tmp_path / "ray" / name).read_bytes() == data for name, data in kept.items())
    exact = [c for c in expected.columns if ":score:" not in c]  # row, kept columns, status, decisions
    pd.testing.assert_frame_equal(scored[exact], expected[exact])
    scores = [c for c in expected.columns if ":score:" in c]
    assert (scored[scores] - expected[scores]).abs().max().max() < 1e-5


def test_images_are_scored_a_batch_at_a_time_and_the_ones_that_fail_are_named(image_server, tmp_path):
    from conftest import small_image_model

    package = small_image_model(tmp_path / "model")
    urls = [f"{image_server.url}/latency/{i}.png" for i in range(22)]
    urls[3], urls[8], urls[13] = f"{image_server.url}/missing.jpg", f"{image_server.url}/page.jpg", " "
    path = tmp_path / "images.csv"
    pd.DataFrame({"id": range(22), "url": urls}).to_csv(path, index=False)
    predictor = Predictor(package, batch_size=4)  # 19 images to load: 5 batches in each of the 2 chunks
    before = dict(image_server.hits)  # the server is the session's
    manifest = score_file(predictor, str(path), tmp_path / "out", "url", keep=["id"], chunk_rows=11)
    scored, _ = read_output(tmp_path / "out")
    assert manifest["rows"] == 22 and scored["id"].tolist() == [str(i) for i in range(22)]  # CSV cells as text
    assert scored.loc[13, "status"] == "empty"
    assert scored.loc[3, "status"].startswith("failed") and "404" in scored.loc[3, "status"]
    assert scored.loc[8, "status"].startswith("failed") and "image" in scored.loc[8, "status"]
    ok = scored.index.difference([3, 8, 13])
    assert (scored.loc[ok, "status"] == "ok").all() and scored.loc[[3, 8, 13], "cat:decision"].isna().all()
    expected = predictor.scores([urls[i] for i in ok])["cat"]  # each image alone through predict's path
    assert abs(scored.loc[ok, ["cat:score:no", "cat:score:yes"]].to_numpy() - expected).max() < 1e-5
    assert all(image_server.hits[f"/latency/{i}.png"] - before.get(f"/latency/{i}.png", 0) == 2
               for i in ok)  # once by score, once above
