"""Run records: every `headsmith train` and `headsmith tune`, started from the CLI or queued by the web app, kept in
the catalog with its pid, status, start, end and exit code, so anyone (the app after a restart, too) can tell what is
running and what became of it.

A run launched by the app is queued first; the process it starts finds its record through HEADSMITH_RUN_ID and takes
it over. A process that dies without a word (kill -9, power) is told apart by its pid: a record still `running`
whose process is gone reads as `died`."""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from headsmith.errors import HeadsmithError
from headsmith.workspace import Workspace

RUN_ID_ENV = "HEADSMITH_RUN_ID"
STARTING_SECONDS = 60  # a run claimed from the queue has this long to get a process (its pid) before it counts as died


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def queue_run(workspace: Workspace, kind: str, args: list[str]) -> int:
    """A run to start when none is running (the app's queue): its record id."""
    with workspace.catalog() as db:
        return db.execute("INSERT INTO runs (kind, args, origin, status, created_at) VALUES (?, ?, 'app', 'queued', ?)",
                          (kind, json.dumps(args), _now())).lastrowid


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended; its parent has not waited yet
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _status(row) -> dict:
    run = dict(row)
    run["args"] = json.loads(run["args"])
    starting = run["pid"] is None and run["started_at"] and (
        datetime.now(timezone.utc) - datetime.fromisoformat(run["started_at"])).total_seconds() < STARTING_SECONDS
    if run["status"] in ("running", "stopping") and not starting and not _alive(run["pid"]):
        run["status"] = "died" if run["status"] == "running" else "stopped"  # gone without recording its end
    return run


def list_runs(workspace: Workspace, limit: int = 200) -> list[dict]:
    """The newest runs first, with their status as it is now."""
    with workspace.catalog() as db:
        return [_status(r) for r in db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))]


def get_run(workspace: Workspace, run_id: int) -> dict | None:
    with workspace.catalog() as db:
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _status(row) if row else None


def running(workspace: Workspace) -> list[dict]:
    """The runs whose process is at work (or being stopped)."""
    with workspace.catalog() as db:
        rows = db.execute("SELECT * FROM runs WHERE status IN ('running', 'stopping')").fetchall()
    return [run for run in map(_status, rows) if run["status"] in ("running", "stopping")]


def next_queued(workspace: Workspace) -> dict | None:
    with workspace.catalog() as db:
        row = db.execute("SELECT * FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
    return _status(row) if row else None


def mark(workspace: Workspace, run_id: int, **fields) -> None:
    """Set fields of a run's record (status, pid, folder, started_at, ended_at, exit_code)."""
    with workspace.catalog() as db:
        db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), run_id))


def _moved(workspace: Workspace, run_id: int, before: tuple[str, ...], **fields) -> bool:
    """Set `fields` if the run's status is one of `before` (checked and set at once): whether it was."""
    with workspace.catalog() as db:
        return db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ? AND status IN "
                          f"({', '.join('?' * len(before))})", (*fields.values(), run_id, *before)).rowcount > 0


def claim(workspace: Workspace, run_id: int) -> bool:
    """Take a queued run to start it (another app on the workspace will not start it too)."""
    return _moved(workspace, run_id, ("queued",), status="running", started_at=_now())


def cancel(workspace: Workspace, run_id: int) -> bool:
    """A queued run that will never start."""
    return _moved(workspace, run_id, ("queued",), status="stopped", ended_at=_now())


def ended(workspace: Workspace, run_id: int, code: int) -> None:
    """The end of a run whose process was waited for, unless the run recorded it itself (it could not if killed)."""
    _moved(workspace, run_id, ("stopping",), status="stopped", exit_code=code, ended_at=_now())
    _moved(workspace, run_id, ("running",), exit_code=code, ended_at=_now(),
           status="stopped" if code < 0 else "failed" if code else "finished")


def set_folder(folder: Path | str) -> None:
    """The current run's folder, once it is known, in the process a record is tracking (else nothing). The first
    one stays: a study's folder before its trials', a sweep's first job."""
    run_id = os.environ.get(RUN_ID_ENV)
    if run_id and os.environ.get("LOCAL_RANK", "0") == "0":
        with Workspace().catalog() as db:
            db.execute("UPDATE runs SET folder = ? WHERE id = ? AND folder IS NULL", (str(folder), int(run_id)))


class Stopped(BaseException):
    """SIGTERM: the app's stop button, or a person's kill. Not an Exception (as KeyboardInterrupt is not): Hydra
    turns an Exception raised in a job into exit code 1, which would record a stopped run as failed."""


@contextmanager
def tracked(kind: str, args: list[str]):
    """Record this process's run (`kind`: train or tune) from start to end: a record the app queued for it (found
    through HEADSMITH_RUN_ID), else a new one. DDP's other ranks (re-runs of this command) record nothing."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    workspace = Workspace()
    started = {"status": "running", "pid": os.getpid(), "started_at": _now()}
    if os.environ.get(RUN_ID_ENV):
        run_id = int(os.environ[RUN_ID_ENV])
        mark(workspace, run_id, **started)
    else:
        with workspace.catalog() as db:
            run_id = db.execute("INSERT INTO runs (kind, args, origin, status, pid, created_at, started_at) "
                                "VALUES (?, ?, 'cli', ?, ?, ?, ?)", (kind, json.dumps(args), started["status"],
                                                                    started["pid"], started["started_at"],
                                                                    started["started_at"])).lastrowid
        os.environ[RUN_ID_ENV] = str(run_id)  # for set_folder, and any process this one starts

    def stop(signum, frame):
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    status, code = "failed", 1
    try:
        yield
        status, code = "finished", 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        status = "finished" if code == 0 else "failed"
        raise
    except HeadsmithError:
        code = 2  # as the CLI exits
        raise
    except (Stopped, KeyboardInterrupt):
        status, code = "stopped", 128 + signal.SIGTERM
        raise SystemExit(code) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        mark(workspace, run_id, status=status, exit_code=code, ended_at=_now())
