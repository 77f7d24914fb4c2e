"""Datasets: editable tables imported from CSV into the SQLite catalog. Every change is one transaction and is kept
in the dataset's history; image cells have a fetch status per row."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, track

from headsmith.data.ingest import Column, CsvTable, label_mapping
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


def _label_mappings(table: CsvTable, columns: list[Column], whole: bool = True) -> tuple[dict, list[str]]:
    """How each label column's raw values are stored (see `label_mapping`), with notes for the report. `whole`:
    these are all the dataset's rows, so a label column with one class is worth a note."""
    mappings, notes = {}, []
    for c in columns:
        if c.type == "label":
            mappings[c.name], changes = label_mapping(table.label_counts(c.name))
            notes += [f"column '{c.name}': {n}" for n in changes]
            classes = {v for v in mappings[c.name].values() if v is not None}
            if whole and len(classes) == 1:
                notes.append(f"column '{c.name}': only one class ('{next(iter(classes))}'); a head needs at least two, "
                             "so it cannot be a head on its own")
    return mappings, notes


def _insert_rows(db, dataset: int, table: CsvTable, columns: list[Column], mappings: dict, first: int,
                 description: str) -> int:
    """Store the table's rows a chunk at a time (cells as stored: labels mapped, ignored columns left out), each
    image cell pending a fetch, and add them to the tallies. Returns how many rows were stored."""
    kept = [(table.columns.index(c.name), c.name, mappings.get(c.name)) for c in columns if c.type != "ignore"]
    images = [c.name for c in columns if c.type == "image"]
    source, folder, now, stored = str(table.path), table.path.parent, _now(), 0
    tallies = Counter()
    db.execute("INSERT INTO bulk_loads VALUES (?)", (dataset,))  # these rows are counted here (see the schema)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=table.count < 100_000) as progress:
        task = progress.add_task(description, total=table.count)
        for chunk in table.chunks():
            records = [{name: mapping[cells[i]] if mapping else cells[i] for i, name, mapping in kept}
                       for _, cells in chunk]
            rows = range(first + stored, first + stored + len(chunk))
            db.executemany("INSERT INTO dataset_rows (dataset_id, row, line, source, data) VALUES (?, ?, ?, ?, ?)",
                           [(dataset, row, line, source, json.dumps(rec, ensure_ascii=False))
                            for row, (line, _), rec in zip(rows, chunk, records)])
            media = [(dataset, row, col, local_ref(rec[col].strip(), folder), now)
                     for row, rec in zip(rows, records) for col in images if rec[col].strip()]
            db.executemany("INSERT INTO media (dataset_id, row, column, ref, status, detail, updated_at) "
                           "VALUES (?, ?, ?, ?, 'pending', '', ?)", media)
            tallies.update(("label", name, rec[name]) for rec in records for _, name, mapping in kept
                           if mapping and rec[name] is not None)
            tallies.update(("media", col, "pending") for _, _, col, _, _ in media)
            stored += len(chunk)
            progress.advance(task, len(chunk))
    tallies["rows", "", ""] = stored
    db.executemany("INSERT INTO tallies VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
                   [(dataset, *key, n) for key, n in tallies.items()])
    db.execute("DELETE FROM bulk_loads WHERE dataset_id = ?", (dataset,))
    return stored


def import_dataset(workspace: Workspace, name: str, table: CsvTable, columns: list[Column]) -> list[str]:
    """Create the dataset with all its rows in one transaction (a crash leaves no dataset; memory stays bounded:
    the rows go in a chunk at a time). Returns report notes. Images are fetched afterwards, by `fetch_media`,
    which can be interrupted and run again."""
    check_name(name)
    mappings, notes = _label_mappings(table, columns)
    with workspace.catalog() as db:
        if db.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone():
            raise DatasetError(f"a dataset named '{name}' already exists; pick another name, or add rows to it with "
                               f"headsmith dataset add-rows {name} FILE.csv")
        cursor = db.execute("INSERT INTO datasets (name, columns, source, source_sha256, created_at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (name, json.dumps([c.as_dict() for c in columns]), str(table.path.resolve()),
                             file_sha256(table.path), _now()))
        rows = _insert_rows(db, cursor.lastrowid, table, columns, mappings, 1, f"importing '{name}'")
        _record(db, cursor.lastrowid, "import", file=str(table.path.resolve()), rows=rows,
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
    columns = [dataset.column(c) for c in needed]
    mappings, notes = _label_mappings(table, columns, whole=False)
    with workspace.catalog() as db:
        first = db.execute("SELECT COALESCE(MAX(row), 0) + 1 FROM dataset_rows WHERE dataset_id = ?",
                           (dataset.id,)).fetchone()[0]
        rows = _insert_rows(db, dataset.id, table, columns, mappings, first, f"adding rows to '{name}'")
        _record(db, dataset.id, "add_rows", file=str(table.path.resolve()), rows=rows, first_row=first, notes=notes)
    return rows, notes


def _to_fetch(workspace: Workspace, dataset: Dataset, store: BlobStore, page: int = 5_000) -> Iterator:
    """((row, column), ref) of each live image cell not fetched yet, failed, or whose blob is gone; read a page at a
    time (each its own short read), so the fetch can write results meanwhile and memory stays bounded."""
    last = (0, "")
    while True:
        with workspace.catalog() as db:
            rows = db.execute(
                "SELECT m.row, m.column, m.ref, m.status, m.sha256 FROM media m JOIN dataset_rows r "
                "USING (dataset_id, row) WHERE m.dataset_id = ? AND r.deleted = 0 AND (m.row, m.column) > (?, ?) "
                "ORDER BY m.row, m.column LIMIT ?", (dataset.id, *last, page)).fetchall()
        if not rows:
            return
        last = (rows[-1]["row"], rows[-1]["column"])
        yield from (((r["row"], r["column"]), r["ref"]) for r in rows
                    if r["status"] != "ok" or not store.path(r["sha256"]).is_file())


def fetch_media(workspace: Workspace, name: str, fetcher: MediaFetcher | None = None) -> dict[str, int]:
    """Fetch every image cell that is not fetched yet or failed; results are committed as they arrive, so an
    interrupted fetch resumes where it stopped. Returns the count per status over the whole dataset."""
    dataset = get_dataset(workspace, name)
    fetcher = fetcher or MediaFetcher(BlobStore(workspace.blobs_dir))
    if fetcher.base_dir is None:
        fetcher.base_dir = Path(dataset.source).parent
    counts = summary(workspace, name)["media"]
    if counts:
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

            todo = sum(n for status, n in counts.items() if status != "ok")  # plus any ok whose blob is gone
            fetcher.fetch_many(_to_fetch(workspace, dataset, fetcher.store), save, total=todo or None,
                               description=f"fetching images for '{name}'")
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
    """Live image cells per fetch status, most first."""
    return summary(workspace, name)["media"]


def summary(workspace: Workspace, name: str) -> dict:
    """What `dataset show` prints above the rows, read from the tallies (no scan of the rows): the live row count,
    each label column's classes with counts, and the image cells per status; both sorted by count, most first."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        tallies = db.execute("SELECT what, column, value, n FROM tallies WHERE dataset_id = ? AND n > 0 "
                             "ORDER BY n DESC, value", (dataset.id,)).fetchall()
    classes = {c: {} for c in dataset.of_type("label")}
    media: dict[str, int] = {}
    for t in tallies:
        if t["what"] == "label" and t["column"] in classes:
            classes[t["column"]][t["value"]] = t["n"]
        elif t["what"] == "media":
            media[t["value"]] = media.get(t["value"], 0) + t["n"]
    rows = next((t["n"] for t in tallies if t["what"] == "rows"), 0)
    return {"rows": rows, "classes": classes, "media": dict(sorted(media.items(), key=lambda kv: (-kv[1], kv[0])))}


def failed_images(workspace: Workspace, name: str, limit: int | None = None, offset: int = 0) -> tuple[int, list[dict]]:
    """The live image cells that are not fetched, in row order, each with its cell as written (`ref`): (how many
    in all, the page asked for)."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        # Through the status index, one status at a time: a scan of every image cell would take seconds at millions.
        statuses = "SELECT value FROM tallies WHERE dataset_id = ? AND what = 'media' AND value != 'ok' AND n > 0"
        total = db.execute("SELECT COALESCE(SUM(n), 0) FROM tallies WHERE dataset_id = ? AND what = 'media' "
                           "AND value != 'ok'", (dataset.id,)).fetchone()[0]
        page = db.execute(f"SELECT m.row, r.line, m.column, (SELECT value FROM json_each(r.data) WHERE key = m.column) "
                          f"AS ref, m.status, m.detail FROM media m "
                          f"JOIN dataset_rows r USING (dataset_id, row) WHERE m.dataset_id = ? AND r.deleted = 0 "
                          f"AND m.status IN ({statuses}) ORDER BY m.row, m.column LIMIT ? OFFSET ?",
                          (dataset.id, dataset.id, -1 if limit is None else limit, offset)).fetchall()
    return total, [dict(r) for r in page]


def _rows_select(dataset: Dataset) -> tuple[str, list]:
    """The live rows with each image column's fetch status joined in; the caller adds the order and the range."""
    images = dataset.of_type("image")
    joins = "".join(f" LEFT JOIN media m{i} ON m{i}.dataset_id = r.dataset_id AND m{i}.row = r.row "
                    f"AND m{i}.column = ?" for i in range(len(images)))
    picks = "".join(f", m{i}.status, m{i}.detail, m{i}.sha256" for i in range(len(images)))
    return (f"SELECT r.row, r.line, r.source, r.data{picks} FROM dataset_rows r{joins} "
            "WHERE r.dataset_id = ? AND r.deleted = 0", [*images, dataset.id])


def _frame(dataset: Dataset, rows: list) -> pd.DataFrame:
    """`row`, `line`, `source`, every kept column, and per image column `COL:status`, `COL:detail`, `COL:sha256`."""
    columns = [c.name for c in dataset.columns if c.type != "ignore"]
    images = dataset.of_type("image")
    records = []
    for r in rows:
        record = {"row": r[0], "line": r[1], "source": r[2], **json.loads(r[3])}
        for i, col in enumerate(images):
            status, detail, sha = r[4 + 3 * i: 7 + 3 * i]
            record |= {f"{col}:status": status or "empty", f"{col}:detail": detail if status else "no value",
                       f"{col}:sha256": sha}
        records.append(record)
    media = [f"{col}:{part}" for col in images for part in ("status", "detail", "sha256")]
    return pd.DataFrame(records, columns=["row", "line", "source", *columns, *media])


def rows_page(workspace: Workspace, name: str, limit: int, offset: int = 0) -> pd.DataFrame:
    """A page of the live rows in row order (see `_frame` for the columns)."""
    dataset = get_dataset(workspace, name)
    select, params = _rows_select(dataset)
    with workspace.catalog() as db:
        return _frame(dataset, db.execute(f"{select} ORDER BY r.row LIMIT ? OFFSET ?",
                                          (*params, limit, offset)).fetchall())


def row_chunks(workspace: Workspace, name: str, chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """Every live row in row order, `chunk_rows` at a time, all read in one transaction: edits made meanwhile by
    other processes are not seen half-way."""
    dataset = get_dataset(workspace, name)
    select, params = _rows_select(dataset)
    with workspace.catalog() as db:
        db.execute("BEGIN")  # one read transaction: a consistent view across the chunks (WAL lets writers go on)
        last = 0
        while True:
            rows = db.execute(f"{select} AND r.row > ? ORDER BY r.row LIMIT ?", (*params, last, chunk_rows)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield _frame(dataset, rows)


def rows_frame(workspace: Workspace, name: str) -> pd.DataFrame:
    """All the live rows at once: for small datasets (tests, previews); big work goes through `row_chunks`."""
    chunks = list(row_chunks(workspace, name))
    return pd.concat(chunks, ignore_index=True) if chunks else _frame(get_dataset(workspace, name), [])


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
            "(SELECT COALESCE(SUM(n), 0) FROM tallies t WHERE t.dataset_id = d.id AND t.what = 'rows') AS rows, "
            "(SELECT COALESCE(SUM(n), 0) FROM tallies t WHERE t.dataset_id = d.id AND t.what = 'media' "
            " AND t.value != 'ok') AS media_not_ok FROM datasets d ORDER BY d.name")]


def delete_dataset(workspace: Workspace, name: str) -> None:
    """Rows, statuses and history go; snapshots made from it stay (they are self-contained), and so do blobs."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        db.execute("DELETE FROM datasets WHERE id = ?", (dataset.id,))
