"""Deployments: a model in BentoML's model store, a Bento built for it, `bentoml serve` processes, API keys.

Each workspace has its own BentoML home (`<workspace>/bentoml`), so models and Bentos stay with the workspace."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil

import headsmith
from headsmith.config import bundled
from headsmith.data.dataset import check_name
from headsmith.errors import HeadsmithError
from headsmith.files import write_atomic
from headsmith.serving.auth import key_hash, new_key, write_key_file
from headsmith.workspace import Workspace

TORCH = "torch==2.14.1\ntorchvision==0.29.1\n"
TRAINING_ONLY = {"peft", "accelerate", "duckdb", "ray"}  # LoRA adapters are merged before packaging; data work
TEST_ONLY = {"pytest", "pytest-xdist", "execnet", "hypothesis", "selenium"}  # the lock's test tools: never served
DEFAULTS = {"max_batch_size": 32, "max_latency_ms": 1000, "max_inputs": 64, "max_text_chars": 10_000,
            "allow_urls": False, "max_body_bytes": 32 * 2**20, "max_image_bytes": 20 * 2**20}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def use_bentoml_home(workspace: Workspace) -> Path:
    """Point BentoML at the workspace's store; set before bentoml is imported (it reads the variable once)."""
    home = workspace.root / "bentoml"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return home


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-.") or "model"


def store_model(workspace: Workspace, ref: str) -> tuple[str, str, int | None]:
    """Copy a model package into BentoML's model store (safetensors and JSON: no pickle) once; its tag names the
    registered version, or the weights' hash for a folder outside the registry."""
    import bentoml

    from headsmith.models.package import WEIGHTS_FILE  # torch: imported when a model is stored, not to list keys
    from headsmith.models.registry import model_identity

    path, name, version = model_identity(workspace, ref)
    if version is not None:
        tag = f"headsmith-{_slug(name)}:v{version}"
    else:
        with open(path / WEIGHTS_FILE, "rb") as f:
            tag = f"headsmith-{_slug(name)}:{hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"

    def stored() -> bool:
        try:
            bentoml.models.get(tag)
            return True
        except bentoml.exceptions.NotFound:
            return False
    if not stored():
        try:
            with bentoml.models.create(tag, labels={"headsmith_model": _slug(name), "version": str(version or "")},
                                       metadata={"source": str(path)}) as model:
                shutil.copytree(path, model.path, dirs_exist_ok=True)
        except bentoml.exceptions.BentoMLException:
            if not stored():  # else another deployment of this model stored the same files a moment ago
                raise
    return tag, name, version


def _build_context(folder: Path) -> None:
    """What a Bento carries: the headsmith package (no caches) and the pinned requirements."""
    shutil.copytree(Path(headsmith.__file__).parent, folder / "headsmith",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(bundled("bentofile.yaml"), folder / "bentofile.yaml")
    lock = bundled("requirements.lock")  # every version the tests ran with; torch is installed apart from it
    pinned = [line for line in (lock.read_text().splitlines() if lock.exists() else [])
              if line.split("==")[0].lower() not in TRAINING_ONLY | TEST_ONLY]
    (folder / "requirements.txt").write_text(TORCH + "".join(f"{line}\n" for line in pinned))


def create_deployment(workspace: Workspace, name: str, model_ref: str, **settings) -> dict:
    """Store the model, build its Bento, record the deployment. Refuses a name already in use."""
    check_name(name, "deployment")
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise HeadsmithError(f"unknown deployment setting {unknown[0]} (settings: {', '.join(DEFAULTS)})")
    with workspace.catalog() as db:
        if db.execute("SELECT 1 FROM deployments WHERE name = ?", (name,)).fetchone():
            raise HeadsmithError(f"deployment '{name}' exists: `headsmith deploy delete {name}` first, or pick "
                                 "another name")
    use_bentoml_home(workspace)
    import bentoml

    tag, model_name, version = store_model(workspace, model_ref)
    settings = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    arguments = {"model": tag, "name": model_name, "version": version, **settings}
    with tempfile.TemporaryDirectory(prefix="headsmith-bento-") as ctx:
        _build_context(Path(ctx))
        bento = bentoml.bentos.build_bentofile(str(Path(ctx) / "bentofile.yaml"), build_ctx=ctx,
                                               name=f"headsmith-{_slug(name)}", args=arguments,
                                               labels={"deployment": _slug(name)})
    folder = workspace.deployments_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    model_label = f"{model_name}:{version}" if version is not None else model_name
    try:
        with workspace.catalog() as db:
            db.execute("INSERT INTO deployments (name, model, bentoml_model, bento, settings, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (name, model_label, tag, str(bento.tag), json.dumps(arguments),
                                                     _now()))
            write_key_file(db, _keys_file(workspace, name), name)
    except sqlite3.IntegrityError:  # another process recorded the name while this one built its Bento
        bentoml.bentos.delete(str(bento.tag))
        raise HeadsmithError(f"deployment '{name}' was created by another process while this one built its Bento "
                             "(deleted again); `headsmith deploy list` shows it. Pick another name") from None
    return get_deployment(workspace, name)


def get_deployment(workspace: Workspace, name: str) -> dict:
    with workspace.catalog() as db:
        row = db.execute("SELECT * FROM deployments WHERE name = ?", (name,)).fetchone()
        known = [r["name"] for r in db.execute("SELECT name FROM deployments ORDER BY name")]
    if row is None:
        raise HeadsmithError(f"no deployment '{name}'" + (f" (deployments: {', '.join(known)})" if known else
                                                          ": create one with headsmith deploy create NAME --model M"))
    return {**dict(row), "settings": json.loads(row["settings"]), **_process(workspace, name, row["bento"])}


def list_deployments(workspace: Workspace) -> list[dict]:
    with workspace.catalog() as db:
        names = [r["name"] for r in db.execute("SELECT name FROM deployments ORDER BY name")]
        keys = {r["deployment"]: r["n"] for r in db.execute(
            "SELECT deployment, COUNT(*) AS n FROM deploy_keys WHERE revoked_at IS NULL GROUP BY deployment")}
    return [{**get_deployment(workspace, n), "keys": keys.get(n, 0)} for n in names]


# --- serving: one `bentoml serve` process per deployment, its pid and port kept beside its keys ---

def _state_file(workspace: Workspace, name: str) -> Path:
    return workspace.deployments_dir / name / "server.json"


def _identity(pid: int) -> dict | None:
    """What tells a process apart beyond its pid, which the system reuses: its start time and command line.
    None when no such process runs (or it has exited and waits to be reaped)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return {"create_time": process.create_time(), "cmdline": process.cmdline()}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # another user's process: not one this workspace started
        return {"create_time": None, "cmdline": []}


def _process(workspace: Workspace, name: str, bento: str) -> dict:
    """The deployment's server as its record says and as the system sees it: running (the recorded pid is still
    the server that was started: same start time and command line), stopped (no record, or that process is gone),
    or stale (the record is unreadable, or the pid now belongs to another program: never signalled)."""
    path = _state_file(workspace, name)
    if not path.is_file():
        return {"status": "stopped", "url": None, "pid": None}
    try:
        state = json.loads(path.read_text())
        pid, url = state["pid"], state["url"]
        if type(pid) is not int or pid <= 1 or not isinstance(url, str):
            raise ValueError(f"pid {pid!r}, url {url!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"status": "stale", "url": None, "pid": None, "note": f"{path} is unreadable ({e})"}
    now = _identity(pid)
    if now is None:
        return {"status": "stopped", "url": None, "pid": None}
    # The same process: the start time recorded (a reused pid has another), still serving this Bento. Not the exact
    # command line recorded: read at once after the start, under load it was seen to differ from the one read later.
    recorded_time = state.get("create_time")
    same = "serve" in now["cmdline"] and bento in now["cmdline"]
    if recorded_time is not None:
        same = same and now["create_time"] is not None and abs(now["create_time"] - recorded_time) < 0.5
    if not same:
        shown = " ".join(now["cmdline"])[:120] or "another user's process"
        return {"status": "stale", "url": None, "pid": None,
                "note": f"the recorded pid {pid} is not this deployment's server any more (it is now: {shown})"}
    return {"status": "running", "url": url, "pid": pid}


def _serving_home(workspace: Workspace, name: str) -> Path:
    """The deployment's own BentoML home: the workspace's store (Bentos, models) linked in, beside a Prometheus
    folder of its own (BentoML empties that folder whenever a server starts: deployments sharing one would wipe and
    mix each other's metrics)."""
    store = use_bentoml_home(workspace)
    home = workspace.deployments_dir / name / "bentoml"
    home.mkdir(parents=True, exist_ok=True)
    for part in ("bentos", "models"):
        (home / part).unlink(missing_ok=True)
        (home / part).symlink_to(store / part, target_is_directory=True)
    return home


def serve_deployment(workspace: Workspace, name: str, port: int = 3000, host: str = "127.0.0.1",
                     wait: float = 300) -> dict:
    """Start `bentoml serve BENTO` in the background (its log in the deployment's folder) and wait until it is
    ready to answer."""
    deployment = get_deployment(workspace, name)
    if deployment["status"] == "running":
        raise HeadsmithError(f"deployment '{name}' is already running at {deployment['url']}")
    folder = workspace.deployments_dir / name
    env = {**os.environ, "BENTOML_HOME": str(_serving_home(workspace, name)),
           "HEADSMITH_KEYS_FILE": str(folder / "keys.json"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    log = open(folder / "server.log", "ab")
    process = subprocess.Popen([str(bentoml_cli), "serve", deployment["bento"], "--host", host, "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{host}:{port}"
    record = {"pid": process.pid, "url": url, "started_at": _now(),
              "create_time": (_identity(process.pid) or {}).get("create_time")}
    write_atomic(_state_file(workspace, name), json.dumps(record))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _state_file(workspace, name).unlink(missing_ok=True)
            tail = (folder / "server.log").read_text(errors="replace")[-2000:]
            raise HeadsmithError(f"deployment '{name}' stopped while starting (exit {process.returncode}); "
                                 f"the end of {folder / 'server.log'}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return get_deployment(workspace, name)
        except OSError:
            pass
        time.sleep(0.5)
    stop_deployment(workspace, name)
    raise HeadsmithError(f"deployment '{name}' was not ready within {wait:.0f} s; see {folder / 'server.log'}")


def stop_deployment(workspace: Workspace, name: str) -> bool:
    """Stop the deployment's server (its whole process group: BentoML starts one process per service). Only a
    process that is still the server started signalled; a stale record is removed. True when a server stopped."""
    server = get_deployment(workspace, name)
    path = _state_file(workspace, name)
    if server["status"] != "running":
        path.unlink(missing_ok=True)
        return False
    pid = server["pid"]
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if _identity(pid) is None:
            break
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def delete_deployment(workspace: Workspace, name: str) -> None:
    """Stop it, delete its Bento and record; the model stays in BentoML's store for other deployments."""
    deployment = get_deployment(workspace, name)
    stop_deployment(workspace, name)
    use_bentoml_home(workspace)
    import bentoml

    try:
        bentoml.bentos.delete(deployment["bento"])
    except bentoml.exceptions.NotFound:
        pass
    with workspace.catalog() as db:
        db.execute("DELETE FROM deployments WHERE name = ?", (name,))
    shutil.rmtree(workspace.deployments_dir / name, ignore_errors=True)


# --- API keys: each change and the keys.json it leads to are one transaction holding the catalog's write lock ---

def _keys_file(workspace: Workspace, name: str) -> Path:
    return workspace.deployments_dir / name / "keys.json"


def create_key(workspace: Workspace, name: str, label: str = "") -> tuple[str, str]:
    """A new key for the deployment: returned once, stored as its hash."""
    get_deployment(workspace, name)
    key, key_id = new_key()
    with workspace.catalog() as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO deploy_keys (deployment, key_id, sha256, label, created_at) VALUES (?, ?, ?, ?, ?)",
                   (name, key_id, key_hash(key), label, _now()))
        write_key_file(db, _keys_file(workspace, name), name)
    return key, key_id


def list_keys(workspace: Workspace, name: str) -> list[dict]:
    get_deployment(workspace, name)
    with workspace.catalog() as db:
        return [dict(r) for r in db.execute("SELECT key_id, label, created_at, revoked_at FROM deploy_keys "
                                            "WHERE deployment = ? ORDER BY created_at", (name,))]


def revoke_key(workspace: Workspace, name: str, key_id: str) -> None:
    get_deployment(workspace, name)
    with workspace.catalog() as db:
        db.execute("BEGIN IMMEDIATE")
        done = db.execute("UPDATE deploy_keys SET revoked_at = ? WHERE deployment = ? AND key_id = ? AND revoked_at "
                          "IS NULL", (_now(), name, key_id)).rowcount
        if not done:
            raise HeadsmithError(f"deployment '{name}' has no active key '{key_id}' (headsmith deploy keys list "
                                 f"{name})")
        write_key_file(db, _keys_file(workspace, name), name)
