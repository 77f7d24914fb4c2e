"""Two processes making the same name at once: one wins, the other gets a clear error (or, for a model, the next
version), never an IntegrityError traceback, and nothing is left behind (no orphan Bento, no staging folder).

The worst interleaving is forced rather than hoped for: when this thread's catalog is about to run the statement
that records the new thing, the other party runs from start to end in a second thread. A writer holding the
catalog's lock makes that party wait, so it gets 3 s before this thread goes on."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from headsmith import load_model
from headsmith.data.snapshot import SnapshotError, create_snapshot, list_snapshots
from headsmith.errors import HeadsmithError
from headsmith.models.registry import register_model, resolve_model
from headsmith.training.train import train
from headsmith.workspace import Workspace


@contextmanager
def interleaved(monkeypatch, statement: str, other):
    """Run `other()` in another thread when this thread's catalog first executes SQL starting with `statement`;
    yields a dict that holds its result (or error) afterwards."""
    real, main, outcome = Workspace.catalog, threading.current_thread(), {}

    def run_other():
        try:
            outcome["result"] = other()
        except Exception as e:  # noqa: BLE001 - reported to the test
            outcome["error"] = e
    thread = threading.Thread(target=run_other)

    class Hooked:
        def __init__(self, conn):
            self._conn = conn

        def __getattr__(self, name):
            return getattr(self._conn, name)

        def execute(self, sql, *args):
            if sql.lstrip().startswith(statement) and thread.ident is None:
                thread.start()
                thread.join(timeout=3)
            return self._conn.execute(sql, *args)

    @contextmanager
    def catalog(workspace):
        with real(workspace) as conn:
            yield Hooked(conn) if threading.current_thread() is main else conn
    monkeypatch.setattr(Workspace, "catalog", catalog)
    try:
        yield outcome
    finally:
        if thread.ident is not None:
            thread.join()
        monkeypatch.setattr(Workspace, "catalog", real)
    assert thread.ident is not None, f"no statement starting with {statement!r} ran"


@pytest.fixture
def run(compose, reviews_snapshot, tmp_path):
    train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'run'}", "trainer.max_epochs=1"))
    return tmp_path / "run"


def test_two_registrations_of_one_name_at_once_get_the_next_two_versions(workspace, run, monkeypatch):
    with interleaved(monkeypatch, "INSERT INTO models", lambda: register_model(workspace, run, "mod")) as other:
        mine = register_model(workspace, run, "mod")
    assert "error" not in other, other
    assert sorted([mine[1], other["result"][1]]) == [1, 2]
    for version in (1, 2):
        assert sorted(load_model(resolve_model(workspace, f"mod:{version}")).classes) == ["long", "sentiment"]
    assert sorted(p.name for p in (workspace.models_dir / "mod").iterdir()) == ["v1", "v2"]
    assert not list(workspace.models_dir.glob(".staging-*"))


def test_two_snapshots_of_one_name_at_once_one_wins_and_the_other_is_told(workspace, reviews_snapshot, monkeypatch):
    def make(labels):  # `long` labels every other row: that snapshot drops the rest
        return create_snapshot(workspace, "reviews", name="reviews-v2", input_column="text", labels=labels,
                               max_invalid=1.0)
    with interleaved(monkeypatch, "INSERT INTO snapshots", lambda: make({"sentiment": "sentiment"})) as other:
        with pytest.raises(SnapshotError, match="'reviews-v2'.*another process.*pick another name"):
            make({"long": "long"})
    assert "error" not in other, other
    assert [s["name"] for s in list_snapshots(workspace)] == ["reviews", "reviews-v2"]
    assert not list(workspace.snapshots_dir.glob(".staging-*"))
    assert list(other["result"].manifest.heads) == ["sentiment"]


def test_two_deployments_of_one_name_at_once_one_wins_and_no_bento_is_left_behind(workspace, run, monkeypatch):
    from headsmith.serving.deploy import create_deployment, get_deployment, use_bentoml_home

    register_model(workspace, run, "mod")

    def winner():  # the other process: it built its Bento and recorded the deployment a moment earlier
        with workspace.catalog() as db:
            db.execute("INSERT INTO deployments (name, model, bentoml_model, bento, settings, created_at) VALUES "
                       "('prod', 'mod:1', 'headsmith-mod:v1', 'headsmith-prod:theirs', '{}', 'now')")
    with interleaved(monkeypatch, "INSERT INTO deployments", winner) as other:
        with pytest.raises(HeadsmithError, match="deployment 'prod' was created by another process"):
            create_deployment(workspace, "prod", "mod:1")
    assert "error" not in other, other
    assert get_deployment(workspace, "prod")["bento"] == "headsmith-prod:theirs"  # the winner's record, untouched
    use_bentoml_home(workspace)
    import bentoml

    assert [str(b.tag) for b in bentoml.bentos.list()] == []  # the Bento this process built is deleted
