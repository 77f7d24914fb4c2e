"""The workspace: the folder holding everything headsmith keeps (catalog, snapshots, runs, models, caches)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    columns TEXT NOT NULL,          -- JSON: [{name, type, reason}]
    source TEXT NOT NULL,           -- the CSV it was imported from
    source_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_rows (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    row INTEGER NOT NULL,           -- stable row number: import order, 1-based
    line INTEGER NOT NULL,          -- line of the source file where the row starts
    source TEXT NOT NULL,           -- file the row came from
    data TEXT NOT NULL,             -- JSON: {column: value}
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dataset_id, row)
);
CREATE TABLE IF NOT EXISTS media (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    row INTEGER NOT NULL,
    column TEXT NOT NULL,
    ref TEXT NOT NULL,              -- URL or path as written in the CSV
    status TEXT NOT NULL,           -- pending, ok, or why not (http_error, timeout, not_an_image, ...)
    detail TEXT NOT NULL DEFAULT '',
    sha256 TEXT,                    -- blob in the store when ok
    updated_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, row, column)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL            -- JSON
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,             -- the registered copy of the model package
    source TEXT NOT NULL,           -- the run or package it was registered from
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,            -- NAME:VERSION (or the package folder) it serves
    bentoml_model TEXT NOT NULL,    -- tag in BentoML's model store
    bento TEXT NOT NULL,            -- tag of the built Bento
    settings TEXT NOT NULL,         -- JSON: the Bento's arguments (batching, limits, URLs)
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deploy_keys (
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    key_id TEXT NOT NULL,           -- random, drawn apart from the key: safe to show
    sha256 TEXT NOT NULL,           -- the key itself is never stored
    label TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    PRIMARY KEY (deployment, key_id)
);
-- Counts that `dataset show` and `dataset list` read instead of scanning the rows: live rows, live rows per class of
-- each label column, live image cells per column and status. Kept by the triggers below in the same transaction as
-- the change itself, so no writer (CLI, app, an older headsmith) can leave them behind; rows with n = 0 mean none.
CREATE TABLE IF NOT EXISTS tallies (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    what TEXT NOT NULL,             -- rows, label or media
    column TEXT NOT NULL,           -- '' for rows
    value TEXT NOT NULL,            -- the class, or the image status; '' for rows
    n INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, what, column, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS media_by_status ON media (dataset_id, status, row);
-- A page of rows at any offset walks this index alone (the app's pager, `dataset show --offset`).
CREATE INDEX IF NOT EXISTS live_rows ON dataset_rows (dataset_id, deleted, row);
CREATE INDEX IF NOT EXISTS history_by_dataset ON history (dataset_id, id);
CREATE VIEW IF NOT EXISTS label_columns AS
    SELECT d.id AS dataset_id, c.value ->> 'name' AS name FROM datasets d, json_each(d.columns) c
    WHERE c.value ->> 'type' = 'label';
-- A bulk load (import, add-rows) counts its rows itself and adds them in the same transaction: per-row triggers
-- would double its time. Its dataset is listed here only inside that transaction, so no one else ever sees it.
CREATE TABLE IF NOT EXISTS bulk_loads (dataset_id INTEGER PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS tally_new_row AFTER INSERT ON dataset_rows
WHEN NEW.deleted = 0 AND NEW.dataset_id NOT IN (SELECT dataset_id FROM bulk_loads) BEGIN
    INSERT INTO tallies VALUES (NEW.dataset_id, 'rows', '', '', 1) ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO tallies SELECT NEW.dataset_id, 'label', cell.key, cell.value, 1 FROM json_each(NEW.data) cell
        WHERE cell.type = 'text' AND cell.key IN (SELECT name FROM label_columns WHERE dataset_id = NEW.dataset_id)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_edited_row AFTER UPDATE OF data ON dataset_rows
WHEN OLD.deleted = 0 AND NEW.deleted = 0 BEGIN
    INSERT INTO tallies SELECT NEW.dataset_id, 'label', cell.key, cell.value, -1 FROM json_each(OLD.data) cell
        WHERE cell.type = 'text' AND cell.key IN (SELECT name FROM label_columns WHERE dataset_id = NEW.dataset_id)
        ON CONFLICT DO UPDATE SET n = n - 1;
    INSERT INTO tallies SELECT NEW.dataset_id, 'label', cell.key, cell.value, 1 FROM json_each(NEW.data) cell
        WHERE cell.type = 'text' AND cell.key IN (SELECT name FROM label_columns WHERE dataset_id = NEW.dataset_id)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_deleted_or_restored_row AFTER UPDATE OF deleted ON dataset_rows
WHEN OLD.deleted != NEW.deleted BEGIN  -- a deleted row stops counting what it counted; a restored one counts again
    INSERT INTO tallies VALUES (NEW.dataset_id, 'rows', '', '', IIF(NEW.deleted, -1, 1))
        ON CONFLICT DO UPDATE SET n = n + excluded.n;
    INSERT INTO tallies SELECT NEW.dataset_id, 'label', cell.key, cell.value, IIF(NEW.deleted, -1, 1)
        FROM json_each(IIF(NEW.deleted, OLD.data, NEW.data)) cell
        WHERE cell.type = 'text' AND cell.key IN (SELECT name FROM label_columns WHERE dataset_id = NEW.dataset_id)
        ON CONFLICT DO UPDATE SET n = n + excluded.n;
    INSERT INTO tallies SELECT NEW.dataset_id, 'media', m.column, m.status, IIF(NEW.deleted, -1, 1) FROM media m
        WHERE m.dataset_id = NEW.dataset_id AND m.row = NEW.row ON CONFLICT DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER IF NOT EXISTS tally_new_media AFTER INSERT ON media
WHEN NEW.dataset_id NOT IN (SELECT dataset_id FROM bulk_loads)
AND (SELECT deleted FROM dataset_rows WHERE dataset_id = NEW.dataset_id AND row = NEW.row) = 0 BEGIN
    INSERT INTO tallies VALUES (NEW.dataset_id, 'media', NEW.column, NEW.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_media_status AFTER UPDATE OF status ON media
WHEN OLD.status != NEW.status
AND (SELECT deleted FROM dataset_rows WHERE dataset_id = NEW.dataset_id AND row = NEW.row) = 0 BEGIN
    INSERT INTO tallies VALUES (NEW.dataset_id, 'media', OLD.column, OLD.status, -1) ON CONFLICT DO UPDATE SET n = n - 1;
    INSERT INTO tallies VALUES (NEW.dataset_id, 'media', NEW.column, NEW.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
-- Every `headsmith train` and `tune`, from the CLI or queued by the app (training/runs.py).
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,             -- train or tune
    args TEXT NOT NULL,             -- JSON: the arguments after `headsmith train` / `tune`
    origin TEXT NOT NULL,           -- cli or app
    status TEXT NOT NULL,           -- queued, running, stopping, finished, failed, stopped (no process: died)
    pid INTEGER,
    folder TEXT,                    -- the run's (or the study's) folder, once known
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    type TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
"""


def _random_key_ids(db: sqlite3.Connection, workspace: "Workspace") -> None:
    """Version 1. Key ids were the first 8 random characters of the key itself, shown in lists and logs and
    written to keys.json: each key gets a random id; the keys (their hashes) are unchanged and keep working."""
    from headsmith.serving.auth import new_key_id, write_key_file  # only when migrating: serving is a layer above

    rows = db.execute("SELECT deployment, key_id FROM deploy_keys").fetchall()
    for row in rows:
        db.execute("UPDATE deploy_keys SET key_id = ? WHERE deployment = ? AND key_id = ?",
                   (new_key_id(), row["deployment"], row["key_id"]))
    for deployment in sorted({row["deployment"] for row in rows}):
        folder = workspace.deployments_dir / deployment
        if folder.is_dir():
            write_key_file(db, folder / "keys.json", deployment)


# The tallies counted from scratch: for catalogs made before the triggers kept them (and to check the triggers).
RECOUNT = """
SELECT dataset_id, 'rows', '', '', COUNT(*) FROM dataset_rows WHERE deleted = 0 GROUP BY dataset_id
UNION ALL
SELECT r.dataset_id, 'label', cell.key, cell.value, COUNT(*) FROM dataset_rows r, json_each(r.data) cell
    WHERE r.deleted = 0 AND cell.type = 'text'
    AND cell.key IN (SELECT name FROM label_columns WHERE dataset_id = r.dataset_id) GROUP BY 1, 3, 4
UNION ALL
SELECT m.dataset_id, 'media', m.column, m.status, COUNT(*) FROM media m
    JOIN dataset_rows r USING (dataset_id, row) WHERE r.deleted = 0 GROUP BY 1, 3, 4
"""


def _count_tallies(db: sqlite3.Connection, workspace: "Workspace") -> None:
    """Version 2. Counts were GROUP BYs over every row's JSON at each `dataset show` (seconds at a million rows)."""
    db.execute("DELETE FROM tallies")
    db.execute(f"INSERT INTO tallies {RECOUNT}")


# The catalog's version is SQLite's user_version; a catalog made by earlier code (version 0) is upgraded in place
# by every step above its version, in one transaction.
MIGRATIONS = [(1, _random_key_ids), (2, _count_tallies)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _migrate(db: sqlite3.Connection, workspace: "Workspace") -> None:
    db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for target, step in MIGRATIONS:
            if version < target:
                step(db, workspace)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    except BaseException:
        db.rollback()
        raise


def workspace_root() -> Path:
    """`HEADSMITH_HOME` if set, else `./workspace`; always absolute so runs that change directory agree."""
    return Path(os.environ.get("HEADSMITH_HOME") or "workspace").expanduser().resolve()


class Workspace:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).resolve() if root else workspace_root()

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def recipes_dir(self) -> Path:
        return self.root / "recipes"

    @property
    def deployments_dir(self) -> Path:
        return self.root / "deployments"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @contextmanager
    def catalog(self):
        """A transaction on the SQLite catalog: committed on success, rolled back on any error."""
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.catalog_path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _migrate(conn, self)
            with conn:
                yield conn
        finally:
            conn.close()
