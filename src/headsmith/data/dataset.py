"""Datasets: editable tables imported from CSV into the SQLite catalog. Every change is one transaction and is kept
in the dataset's history; image cells have a fetch status per row."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.progress import track

from headsmith.data.ingest import Column, CsvTable, normalize_labels
from headsmith.data.media import BlobStore, FetchResult, MediaFetcher, local_ref
from headsmith.errors import DatasetError
from headsmith.workspace import Workspace

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_name(name: str, what: str = "dataset") -> None:
    if not NAME_PATTERN.match(name) or ".." in name:
        raise DatasetError(f"{what} name '{name}' is not allowed: use letters, digits, '.', '_' and '-', starting "
                           "with a letter or digit (no '/', no '..')")


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    columns: list[Column]
    source: str
    source_sha256: str
    created_at: str

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise DatasetError(f"dataset '{self.name}' has no column '{name}' "
                           f"(columns: {', '.join(c.name for c in self.columns)})")

    def of_type(self, kind: str) -> list[str]:
        return [c.name for c in self.columns if c.type == kind]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record(db, dataset_id: int, action: str, **detail) -> None:
    db.execute("INSERT INTO history (dataset_id, at, action, detail) VALUES (?, ?, ?, ?)",
               (dataset_id, _now(), action, json.dumps(detail, ensure_ascii=False)))


def get_dataset(workspace: Workspace, name: str) -> Dataset:
    with workspace.catalog() as db:
        row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [r["name"] for r in db.execute("SELECT name FROM datasets ORDER BY name")]
    if row is None:
        hint = f"datasets: {', '.join(known)}" if known else "import one with: headsmith dataset import FILE.csv --name NAME"
        raise DatasetError(f"no dataset named '{name}' in {workspace.root} ({hint})")
    return Dataset(row["id"], row["name"], [Column(**c) for c in json.loads(row["columns"])], row["source"],
                   row["source_sha256"], row["created_at"])


def _prepare_rows(table: CsvTable, columns: list[Column], whole: bool = True) -> tuple[list[dict], list[str]]:
    """Cells as stored: label columns normalized (with notes for the report), ignored columns left out. `whole`:
    these are all the dataset's rows, so a label column with one class is worth a note."""
    kept = [c for c in columns if c.type != "ignore"]
    data = {c.name: table.values(c.name) for c in kept}
    notes = []
    for c in kept:
        if c.type == "label":
            data[c.name], changes = normalize_labels(data[c.name])
            notes += [f"column '{c.name}': {n}" for n in changes]
            classes = {v for v in data[c.name] if v is not None}
            if whole and len(classes) == 1:
                notes.append(f"column '{c.name}': only one class ('{next(iter(classes))}'); a head needs at least two, "
                             "so it cannot be a head on its own")
    records = [{name: values[i] for name, values in data.items()} for i in range(len(table.rows))]
    return records, notes


def _insert_rows(db, dataset: int, table: CsvTable, records: list[dict], image_columns: list[str], first: int) -> None:
    now = _now()
    db.executemany("INSERT INTO dataset_rows (dataset_id, row, line, source, data) VALUES (?, ?, ?, ?, ?)",
                   [(dataset, first + i, line, str(table.path), json.dumps(rec, ensure_ascii=False))
                    for i, ((line, _), rec) in enumerate(zip(table.rows, records))])
    db.executemany("INSERT INTO media (dataset_id, row, column, ref, status, detail, updated_at) "
                   "VALUES (?, ?, ?, ?, 'pending', '', ?)",
                   [(dataset, first + i, col, local_ref(rec[col].strip(), table.path.parent), now)
                    for i, rec in enumerate(records) for col in image_columns if rec[col].strip()])


def import_dataset(workspace: Workspace, name: str, table: CsvTable, columns: list[Column]) -> list[str]:
    """Create the dataset with all its rows in one transaction (a crash leaves no dataset). Returns report notes.
    Images are fetched afterwards, by `fetch_media`, which can be interrupted and run again."""
    check_name(name)
    records, notes = _prepare_rows(table, columns)
    images = [c.name for c in columns if c.type == "image"]
    with workspace.catalog() as db:
        if db.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone():
            raise DatasetError(f"a dataset named '{name}' already exists; pick another name, or add rows to it with "
                               f"headsmith dataset add-rows {name} FILE.csv")
        cursor = db.execute("INSERT INTO datasets (name, columns, source, source_sha256, created_at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (name, json.dumps([c.as_dict() for c in columns]), str(table.path.resolve()),
                             file_sha256(table.path), _now()))
        _insert_rows(db, cursor.lastrowid, table, records, images, first=1)
        _record(db, cursor.lastrowid, "import", file=str(table.path.resolve()), rows=len(records),
                columns={c.name: c.type for c in columns}, notes=notes)
    return notes


def add_rows(workspace: Workspace, name: str, table: CsvTable) -> tuple[int, list[str]]:
    """Append rows from another CSV with the same columns (ignored columns may be missing)."""
    dataset = get_dataset(workspace, name)
    needed = [c.name for c in dataset.columns if c.type != "ignore"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DatasetError(f"{table.path}: columns {missing} of dataset '{name}' are missing "
                           f"(it has: {', '.join(table.columns)})")
    records, notes = _prepare_rows(table, [dataset.column(c) for c in needed], whole=False)
    with workspace.catalog() as db:
        first = db.execute("SELECT COALESCE(MAX(row), 0) + 1 FROM dataset_rows WHERE dataset_id = ?",
                           (dataset.id,)).fetchone()[0]
        _insert_rows(db, dataset.id, table, records, dataset.of_type("image"), first)
        _record(db, dataset.id, "add_rows", file=str(table.path.resolve()), rows=len(records),
                first_row=first, notes=notes)
    return len(records), notes


def fetch_media(workspace: Workspace, name: str, fetcher: MediaFetcher | None = None) -> dict[str, int]:
    """Fetch every image cell that is not fetched yet or failed; results are committed as they arrive, so an
    interrupted fetch resumes where it stopped. Returns the count per status over the whole dataset."""
    dataset = get_dataset(workspace, name)
    fetcher = fetcher or MediaFetcher(BlobStore(workspace.blobs_dir))
    if fetcher.base_dir is None:
        fetcher.base_dir = Path(dataset.source).parent
    with workspace.catalog() as db:
        todo = [((r["row"], r["column"]), r["ref"]) for r in db.execute(
            "SELECT m.row, m.column, m.ref, m.status, m.sha256 FROM media m JOIN dataset_rows r USING (dataset_id, row) "
            "WHERE m.dataset_id = ? AND r.deleted = 0 ORDER BY m.row", (dataset.id,))
            if r["status"] != "ok" or not fetcher.store.path(r["sha256"]).is_file()]
    if todo:
        with workspace.catalog() as db:
            pending = []

            def save(key, result: FetchResult) -> None:
                pending.append((result.status, result.detail, result.sha256, _now(), dataset.id, *key))
                if len(pending) >= 25:
                    flush()

            def flush() -> None:
                db.executemany("UPDATE media SET status = ?, detail = ?, sha256 = ?, updated_at = ? "
                               "WHERE dataset_id = ? AND row = ? AND column = ?", pending)
                db.commit()
                pending.clear()

            fetcher.fetch_many(todo, save, description=f"fetching {len(todo)} images for '{name}'")
            flush()
    return media_counts(workspace, name)


def verify_media(workspace: Workspace, name: str) -> tuple[int, int]:
    """Re-hash every stored image of the dataset; those whose blob is missing or no longer matches its sha256 are
    marked for fetching again (`fetch_media` then replaces the bad copy). Returns (images checked, damaged)."""
    dataset = get_dataset(workspace, name)
    store = BlobStore(workspace.blobs_dir)
    with workspace.catalog() as db:
        rows = db.execute("SELECT row, column, sha256 FROM media WHERE dataset_id = ? AND status = 'ok'",
                          (dataset.id,)).fetchall()
    shas = sorted({r["sha256"] for r in rows})
    damaged = {sha for sha in track(shas, description=f"checking {len(shas)} stored images of '{name}'")
               if not store.intact(sha)}
    marked = [(_now(), dataset.id, r["row"], r["column"]) for r in rows if r["sha256"] in damaged]
    with workspace.catalog() as db:
        db.executemany("UPDATE media SET status = 'pending', detail = 'stored copy damaged: to fetch again', "
                       "updated_at = ? WHERE dataset_id = ? AND row = ? AND column = ?", marked)
    return len(rows), len(marked)


def media_counts(workspace: Workspace, name: str) -> dict[str, int]:
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        return {r["status"]: r["n"] for r in db.execute(
            "SELECT m.status, COUNT(*) AS n FROM media m JOIN dataset_rows r USING (dataset_id, row) "
            "WHERE m.dataset_id = ? AND r.deleted = 0 GROUP BY m.status ORDER BY n DESC", (dataset.id,))}


def rows_frame(workspace: Workspace, name: str) -> pd.DataFrame:
    """The live rows: `row`, `line`, `source`, every kept column, and per image column `COL:status`,
    `COL:detail`, `COL:sha256`."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        rows = db.execute("SELECT row, line, source, data FROM dataset_rows WHERE dataset_id = ? AND deleted = 0 "
                          "ORDER BY row", (dataset.id,)).fetchall()
        media = db.execute("SELECT row, column, status, detail, sha256 FROM media WHERE dataset_id = ?",
                           (dataset.id,)).fetchall()
    columns = [c.name for c in dataset.columns if c.type != "ignore"]
    frame = pd.DataFrame([{"row": r["row"], "line": r["line"], "source": r["source"], **json.loads(r["data"])}
                          for r in rows], columns=["row", "line", "source", *columns])
    for col in dataset.of_type("image"):
        status = {m["row"]: m for m in media if m["column"] == col}
        frame[f"{col}:status"] = [status[r]["status"] if r in status else "empty" for r in frame["row"]]
        frame[f"{col}:detail"] = [status[r]["detail"] if r in status else "no value" for r in frame["row"]]
        frame[f"{col}:sha256"] = [status[r]["sha256"] if r in status else None for r in frame["row"]]
    return frame


def _live_row(db, dataset: Dataset, row: int):
    found = db.execute("SELECT data, deleted FROM dataset_rows WHERE dataset_id = ? AND row = ?",
                       (dataset.id, row)).fetchone()
    if found is None or found["deleted"]:
        raise DatasetError(f"dataset '{dataset.name}' has no row {row}" + (" (it was deleted)" if found else ""))
    return json.loads(found["data"])


def set_value(workspace: Workspace, name: str, row: int, column: str, value: str) -> tuple[str | None, str | None]:
    """Change one cell (a label, a text); returns (old, new). Image cells are changed by adding rows instead."""
    dataset = get_dataset(workspace, name)
    kind = dataset.column(column).type
    if kind in ("image", "ignore"):
        raise DatasetError(f"column '{column}' is an {kind} column; only label, text and json cells can be edited")
    new = (value.strip() or None) if kind == "label" else value
    with workspace.catalog() as db:
        data = _live_row(db, dataset, row)
        old, data[column] = data[column], new
        db.execute("UPDATE dataset_rows SET data = ? WHERE dataset_id = ? AND row = ?",
                   (json.dumps(data, ensure_ascii=False), dataset.id, row))
        _record(db, dataset.id, "set", row=row, column=column, old=old, new=new)
    return old, new


def delete_rows(workspace: Workspace, name: str, rows: list[int]) -> None:
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        for row in rows:
            _live_row(db, dataset, row)  # every row must exist, or nothing is deleted
        db.executemany("UPDATE dataset_rows SET deleted = 1 WHERE dataset_id = ? AND row = ?",
                       [(dataset.id, r) for r in rows])
        _record(db, dataset.id, "delete_rows", rows=sorted(rows))


def history(workspace: Workspace, name: str) -> list[dict]:
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        return [{"at": r["at"], "action": r["action"], **json.loads(r["detail"])} for r in db.execute(
            "SELECT at, action, detail FROM history WHERE dataset_id = ? ORDER BY id", (dataset.id,))]


def list_datasets(workspace: Workspace) -> list[dict]:
    with workspace.catalog() as db:
        return [dict(r) for r in db.execute(
            "SELECT d.name, d.created_at, d.source, "
            "(SELECT COUNT(*) FROM dataset_rows r WHERE r.dataset_id = d.id AND r.deleted = 0) AS rows, "
            "(SELECT COUNT(*) FROM media m JOIN dataset_rows r USING (dataset_id, row) "
            " WHERE m.dataset_id = d.id AND r.deleted = 0 AND m.status != 'ok') AS media_not_ok "
            "FROM datasets d ORDER BY d.name")]


def delete_dataset(workspace: Workspace, name: str) -> None:
    """Rows, statuses and history go; snapshots made from it stay (they are self-contained), and so do blobs."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        db.execute("DELETE FROM datasets WHERE id = ?", (dataset.id,))
