"""Shared fixtures: a temporary workspace per test, real data samples, a tiny transformers backbone on disk, and one
function that composes a recipe for a fast CPU run through overrides."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per process it starts): two workers on two cores keep both busy, and a second
    # thread each would only oversubscribe them (the suite's CPU time measured 18% lower this way).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import settings  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from headsmith.config import compose_train_config  # noqa: E402
from headsmith.data.dataset import fetch_media, import_dataset  # noqa: E402
from headsmith.data.examples import rotten_tomatoes  # noqa: E402
from headsmith.data.ingest import infer_columns, read_table  # noqa: E402
from headsmith.data.snapshot import create_snapshot  # noqa: E402
from headsmith.models.package import load_model, read_meta  # noqa: E402
from headsmith.models.registry import register_model, resolve_model  # noqa: E402
from headsmith.training.train import train  # noqa: E402
from headsmith.workspace import Workspace  # noqa: E402

HEADSMITH = str(Path(sys.executable).with_name("headsmith"))

# Property-based tests: 200 examples per property everywhere (CI included); no deadline, since a 2-core machine
# running other tests' servers times examples unevenly. No health check is suppressed.
settings.register_profile("headsmith", max_examples=200, deadline=None)
settings.load_profile("headsmith")


# The longest modules first: with two workers (pytest -n 2), a long test started last would leave one core idle at the
# end. Measured with `pytest --durations=0` on this machine; any module not named keeps its place after these.
LONGEST_FIRST = ["test_score", "test_serving", "test_fine_tuning", "test_ui", "test_distributed", "test_ui_walkthrough",
                 "test_resume", "test_train", "test_vision", "test_thresholds_and_predict", "test_base_model",
                 "test_report", "test_playground", "test_install", "test_tune", "test_real_minilm"]


# Modules whose tests all run on one worker under `pytest -n N --dist loadgroup` (make test); every other test goes to
# whichever worker is free.
ONE_WORKER = {
    "tests/test_serving.py": "its deployments are module-scoped fixtures: built once, on one worker",
    "tests/test_distributed.py": "each DDP job runs two processes: one such job at a time",
}


def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup, grouped by ONE_WORKER. pytest-xdist's own loadgroup reads `xdist_group` marks into node IDs,
    which pytest 9.2 no longer takes (its node IDs are computed), so those marks would be ignored without a word."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER else nodeid

    return OneWorkerModules(config, log)


def pytest_collection_modifyitems(items):
    def rank(item):
        module = item.module.__name__.rsplit(".", 1)[-1]
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each module's tests keep their order


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv("HEADSMITH_HOME", str(tmp_path / "workspace"))
    return Workspace()


@pytest.fixture(scope="session")
def reviews(tmp_path_factory) -> pd.DataFrame:
    """The real Rotten Tomatoes snippets (text, sentiment, movie), as `headsmith example-data` writes them."""
    return pd.read_csv(rotten_tomatoes(tmp_path_factory.mktemp("data") / "rotten-tomatoes.csv"))


def write_reviews_csv(reviews: pd.DataFrame, folder: Path) -> Path:
    """240 real reviews, balanced, with a second head (`long`: is the snippet over 100 characters?) that labels only
    every other row, so one model trains on rows that label different heads."""
    sample = pd.concat([g.head(120) for _, g in reviews.groupby("sentiment")]).reset_index(drop=True)
    sample["long"] = (sample["text"].str.len() > 100).map({True: "yes", False: "no"})
    sample.loc[sample.index % 2 == 1, "long"] = ""
    path = folder / "reviews.csv"
    sample.to_csv(path, index=False)
    return path


@pytest.fixture
def reviews_csv(reviews, tmp_path) -> Path:
    return write_reviews_csv(reviews, tmp_path)


def import_csv(workspace: Workspace, path: Path, name: str, **types: str) -> str:
    """`headsmith dataset import PATH --name NAME --yes [--column COL=TYPE ...]`, in process."""
    table = read_table(path)
    import_dataset(workspace, name, table, infer_columns(table, types))
    fetch_media(workspace, name)
    return name


def snapshot_csv(workspace: Workspace, path: Path, name: str, input_column: str, labels: dict, **options):
    """Import a CSV as a dataset and snapshot it under the same name."""
    import_csv(workspace, path, name, **{input_column: "text"}, **{column: "label" for column in labels.values()})
    return create_snapshot(workspace, name, name=name, input_column=input_column, labels=labels, **options)


@pytest.fixture
def reviews_snapshot(workspace, reviews_csv):
    return snapshot_csv(workspace, reviews_csv, "reviews", "text", {"sentiment": "sentiment", "long": "long"})


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A small randomly initialised BERT with MiniLM's tokenizer, saved as a local transformers folder: the same
    builder as the real backbone, fast enough for many tests."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from headsmith.models.backbones import resolve_pretrained

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("all-MiniLM-L6-v2"))
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fast_overrides(output_dir: Path, tiny_backbone: Path | None) -> list[str]:
    """A CPU run into output_dir, on the tiny backbone unless it is None."""
    base = [f"paths.output_dir={output_dir}", "trainer=cpu", "trainer.enable_progress_bar=false"]
    if tiny_backbone:
        base += ["backbone=hf_text", f"backbone.pretrained={tiny_backbone}", "backbone.max_tokens=32",
                 "trainer.max_epochs=2", "dataset.batch_size=32"]
    return base


@pytest.fixture
def compose(tmp_path, tiny_backbone):
    """Compose `train` with overrides for a fast CPU run in tmp_path (tiny backbone unless a test overrides it)."""
    def _compose(*overrides: str, fast: bool = True):
        return compose_train_config([*fast_overrides(tmp_path / "run", tiny_backbone if fast else None), *overrides])
    return _compose


# Commands that only read and write the workspace run in the test's own process, through Click's runner and the
# same `app` the `headsmith` script calls: a new process would import torch and transformers again (2 to 10 s, most
# of such a command's time). Commands that train, score, serve or start a server run as the processes users start;
# test_install runs the installed script itself.
IN_PROCESS = {"dataset", "snapshot", "model", "predict", "eval", "compare", "recipe", "example-data"}


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The `headsmith` command as a user runs it: its exit code, stdout and stderr."""
    if args and args[0] in IN_PROCESS and cwd is None:
        from typer.testing import CliRunner

        from headsmith.cli import app

        result = CliRunner().invoke(app, list(args), env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a crash fails the test with its traceback, as the command would print it
        return subprocess.CompletedProcess([HEADSMITH, *args], result.exit_code, result.stdout, result.stderr)
    return subprocess.run([HEADSMITH, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=900)


@pytest.fixture(scope="session")
def image_server():
    from image_server import ImageServer

    server = ImageServer()
    yield server
    server.close()


ARTIFACTS = Path(os.environ.get("HEADSMITH_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture(scope="session")
def browser():
    """Real headless Chromium (Debian's `chromium` and `chromium-driver`; `make test` installs them), with the
    page's console kept so tests can assert it stayed clean."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a browser online
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "Chromium is missing: apt-get install chromium chromium-driver (make test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1400"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    """Console messages at SEVERE level since the last call (Chromium's log is read once)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def small_image_model(folder: Path) -> Path:
    """A model package with a one-head classifier (`cat`: no/yes) on timm's small test network, random weights
    saved and loaded as a user's local weights would be: for what serving pages do, not how well the model does."""
    import timm
    import torch

    from headsmith.models.backbones import image_backbone
    from headsmith.models.heads import LinearHead
    from headsmith.models.net import MultiHeadNet
    from headsmith.models.package import save_package

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(timm.create_model("test_efficientnet").state_dict(), folder / "net.pth")
    backbone = image_backbone("timm:test_efficientnet", weights=str(folder / "net.pth"), image_size=64, resize=64)
    spec = {"_target_": "headsmith.models.heads.LinearHead", "in_dim": backbone.out_dim, "num_classes": 2}
    net = MultiHeadNet(backbone, {"cat": LinearHead(backbone.out_dim, 2)}, {"cat": ["no", "yes"]}, {"cat": spec})
    return save_package(net, folder / "cat-model", {"snapshots": {}, "metrics": {}})


def wandb_records(run_folder: Path) -> list:
    """The records of an offline W&B run, read from its .wandb file (LevelDB log format: 7-byte header, 32 KiB
    blocks, each record a 7-byte header and a piece of one protobuf `Record`): what `wandb sync` would upload."""
    import wandb
    from wandb.proto import wandb_internal_pb2

    # W&B's service process writes the file after `finish()` returns; teardown waits until it has closed every run.
    wandb.teardown()
    [path] = run_folder.glob("run-*.wandb")
    data, pos, block, pieces, records = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a record header: the block is padded
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pieces = piece if kind in (1, 2) else pieces + piece  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, reviews, tiny_backbone) -> tuple[dict, dict]:
    """A model with two heads (sentiment, long) trained once per session, in a workspace of its own, on the same
    snapshot as `reviews_snapshot` (the same bytes, so the same sha256 in its lineage): `train`'s (metrics, objects).
    Read-only: a test that writes copies it first (as `base` does)."""
    folder = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSMITH_HOME", str(folder / "workspace"))
        workspace = Workspace()
        snapshot_csv(workspace, write_reviews_csv(reviews, folder), "reviews", "text",
                     {"sentiment": "sentiment", "long": "long"})
        return train(compose_train_config([*fast_overrides(folder / "base-run", tiny_backbone),
                                           "dataset.snapshot=reviews", "optimizer.lr=1e-2", "trainer.max_epochs=4"]))


@pytest.fixture(scope="session")
def base_package(base_run) -> Path:
    """The session's trained model package (read-only)."""
    return Path(base_run[0]["model"])


@pytest.fixture
def base(base_package, reviews_snapshot, workspace, tmp_path):
    """The session's base model, copied to tmp_path/base-run/model and registered as `base` in this test's workspace
    (beside the same `reviews` snapshot it was trained on)."""
    assert read_meta(base_package)["lineage"]["snapshots"]["train"]["sha256"] == reviews_snapshot.manifest.sha256
    shutil.copytree(base_package, tmp_path / "base-run" / "model")
    assert register_model(workspace, tmp_path / "base-run" / "model", "base") == ("base", 1)
    return load_model(resolve_model(workspace, "base"))


@pytest.fixture
def short_snapshot(workspace, reviews_csv, tmp_path):
    """The same reviews labelled for a new head: `short` (under 80 characters)."""
    frame = pd.read_csv(reviews_csv)
    frame["short"] = (frame["text"].str.len() < 80).map({True: "yes", False: "no"})
    path = tmp_path / "short.csv"
    frame[["text", "short"]].to_csv(path, index=False)
    return snapshot_csv(workspace, path, "short", "text", {"short": "short"})


@pytest.fixture
def start_ui():
    """`headsmith ui ARGS` as a user starts it: (the URL it prints, the server's base URL)."""
    servers = []

    def start(*args: str) -> tuple[str, str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([HEADSMITH, "ui", "--port", str(port), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
        servers.append(server)
        url = re.search(r"open (http://\S+)", server.stdout.readline()).group(1)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        return url, f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.terminate()
        server.wait(10)


def click_and_load(browser, element) -> None:
    """Click what submits a form, and wait for the page that comes back."""
    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(page))
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")
