"""The workspace: the folder holding everything headsmith keeps (catalog, snapshots, runs, models, caches)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    type TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
"""


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
    def runs_dir(self) -> Path:
        return self.root / "runs"

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
            conn.executescript(SCHEMA)
            with conn:
                yield conn
        finally:
            conn.close()
