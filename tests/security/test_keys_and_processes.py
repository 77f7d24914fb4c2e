"""API key ids say nothing about the key; keys.json always matches the catalog, whatever runs at once; a recorded
server pid is signalled only while it is still the deployment's own server.

A deployment's record is written straight into the catalog here (no Bento is built): what is tested is the
bookkeeping around keys and server processes, which reads only that record; test_serving.py serves real Bentos."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from headsmith.serving import auth
from headsmith.serving.auth import KeyRing, key_hash
from headsmith.serving.deploy import create_key, list_deployments, list_keys, revoke_key, stop_deployment


@pytest.fixture
def deployment(workspace) -> str:
    with workspace.catalog() as db:
        db.execute("INSERT INTO deployments (name, model, bentoml_model, bento, settings, created_at) VALUES "
                   "('mod', 'sentiment:1', 'headsmith-sentiment:v1', 'headsmith-mod:abc', '{}', 'now')")
    (workspace.deployments_dir / "mod").mkdir(parents=True)
    return "mod"


def _file_keys(workspace, name) -> KeyRing:
    return KeyRing(path=str(workspace.deployments_dir / name / "keys.json"))


def test_a_key_id_is_random_and_shares_nothing_with_the_key(workspace, deployment):
    ids = set()
    for _ in range(20):
        key, key_id = create_key(workspace, deployment)
        secret = key.removeprefix("hs_")
        assert not any(key_id[i:i + 6] in secret for i in range(len(key_id) - 5)), (key_id, key)
        ids.add(key_id)
    assert len(ids) == 20


def test_keys_made_by_earlier_versions_get_new_ids_and_keep_working(workspace, deployment):
    """Earlier versions used the key's first 8 random characters as its id (and wrote them to keys.json)."""
    old_key = "hs_" + "Ab3_x9Qz" + "r" * 35
    revoked = "hs_" + "Zz9-y8Xw" + "s" * 35
    with workspace.catalog() as db:
        db.executemany("INSERT INTO deploy_keys (deployment, key_id, sha256, label, created_at, revoked_at) "
                       "VALUES ('mod', ?, ?, 'ci', 'then', ?)",
                       [("Ab3_x9Qz", key_hash(old_key), None), ("Zz9-y8Xw", key_hash(revoked), "later")])
        db.execute("PRAGMA user_version = 0")  # as earlier versions left it
    (workspace.deployments_dir / "mod" / "keys.json").write_text(json.dumps(
        [{"key_id": "Ab3_x9Qz", "sha256": key_hash(old_key), "revoked_at": None},
         {"key_id": "Zz9-y8Xw", "sha256": key_hash(revoked), "revoked_at": "later"}]))

    keys = list_keys(workspace, deployment)
    assert [k["label"] for k in keys] == ["ci", "ci"]
    assert not {k["key_id"] for k in keys} & {"Ab3_x9Qz", "Zz9-y8Xw"}
    written = (workspace.deployments_dir / "mod" / "keys.json").read_text()
    assert "Ab3_x9Qz" not in written and "Zz9-y8Xw" not in written
    ring = _file_keys(workspace, deployment)
    assert ring.accepts(old_key) and not ring.accepts(revoked)  # the keys themselves are unchanged
    active = next(k["key_id"] for k in keys if not k["revoked_at"])
    revoke_key(workspace, deployment, active)  # the new id is the one that works
    assert not _file_keys(workspace, deployment).accepts(old_key)


def test_a_key_created_while_another_is_revoked_never_brings_the_revoked_one_back(workspace, deployment, monkeypatch):
    """The worst interleaving, forced: `keys create` has read the catalog and is about to write keys.json when a
    `keys revoke` runs from start to end. Its keys.json must not be overwritten by the creator's older view."""
    first, first_id = create_key(workspace, deployment)
    real_write = auth.write_atomic
    revoker = threading.Thread(target=revoke_key, args=(workspace, deployment, first_id))
    paused = threading.Event()

    def slow_write(path, data):
        if threading.current_thread() is not revoker and not paused.is_set():
            paused.set()
            revoker.start()
            revoker.join(timeout=3)  # serialized writers: the revoke waits for this one, so give up after a while
        real_write(path, data)
    monkeypatch.setattr(auth, "write_atomic", slow_write)
    second, second_id = create_key(workspace, deployment)
    revoker.join()
    ring = _file_keys(workspace, deployment)
    assert ring.accepts(second) and not ring.accepts(first)
    assert {k["key_id"]: k["revoked_at"] is not None for k in list_keys(workspace, deployment)} == \
        {first_id: True, second_id: False}


def _record_server(workspace, name, pid) -> None:
    (workspace.deployments_dir / name / "server.json").write_text(json.dumps(
        {"pid": pid, "url": "http://127.0.0.1:3999", "started_at": "then"}))


def test_a_recorded_pid_that_now_belongs_to_another_program_is_reported_and_left_alone(workspace, deployment):
    """The server died and its pid went to an unrelated process (here, a sleeping Python in its own session)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        _record_server(workspace, deployment, other.pid)
        listed = list_deployments(workspace)[0]
        assert listed["status"] == "stale" and listed["pid"] is None and "not this deployment's server" in \
            listed["note"]
        assert stop_deployment(workspace, deployment) is False
        time.sleep(0.2)
        assert other.poll() is None  # not signalled
        assert not (workspace.deployments_dir / deployment / "server.json").exists()  # the stale record is gone
        assert list_deployments(workspace)[0]["status"] == "stopped"
    finally:
        other.kill()
        other.wait()


def test_a_recorded_pid_of_a_process_that_ended_is_stopped_not_an_error(workspace, deployment):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _record_server(workspace, deployment, gone.pid)
    assert list_deployments(workspace)[0]["status"] in ("stopped", "stale")
    assert stop_deployment(workspace, deployment) is False


def test_a_garbled_server_record_is_reported_not_a_crash(workspace, deployment):
    (workspace.deployments_dir / deployment / "server.json").write_text('{"pid": "1; rm -rf /"')
    listed = list_deployments(workspace)[0]
    assert listed["status"] == "stale" and "server.json" in listed["note"]
    assert stop_deployment(workspace, deployment) is False


def test_the_catalog_records_its_schema_version(workspace):
    with workspace.catalog():
        pass
    assert sqlite3.connect(workspace.catalog_path).execute("PRAGMA user_version").fetchone()[0] >= 1
