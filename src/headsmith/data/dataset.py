"""Datasets: editable tables imported from CSV into the SQLite catalog. Every change is one transaction and is kept
in the dataset's history; image cells have a fetch status per row."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, track

from headsmith.data.ingest import Column, CsvTable, label_mapping
from headsmith.data.media import BlobStore, FetchResult, MediaFetcher, local_ref
from headsmith.errors import DatasetError, StaleEdit
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


def imported_already(workspace: Workspace, name: str, file: Path, types: dict[str, str]) -> bool:
    """Dataset `name` exists, was imported from these very bytes, and has the column `types` asked for (column ->
    type, those given): importing again only fetches what is still missing."""
    try:
        dataset = get_dataset(workspace, name)
    except DatasetError:
        return False
    kept = {c.name: c.type for c in dataset.columns}
    return all(kept.get(k) == v for k, v in types.items()) and dataset.source_sha256 == file_sha256(Path(file))


def _record(db, dataset_id: int, action: str, **detail) -> int:
    """Keep a change in the dataset's history; returns its id."""
    return db.execute("INSERT INTO history (dataset_id, at, action, detail) VALUES (?, ?, ?, ?)",
               (dataset_id, _now(), action, json.dumps(detail, ensure_ascii=False))).lastrowid


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
                 description: str, images_folder: Path | None = None) -> int:
    """Store the table's rows a chunk at a time (cells as stored: labels mapped, ignored columns left out), each
    image cell pending a fetch, and add them to the tallies. Returns how many rows were stored."""
    kept = [(table.columns.index(c.name), c.name, mappings.get(c.name)) for c in columns if c.type != "ignore"]
    images = [c.name for c in columns if c.type == "image"]
    source, folder, now, stored = str(table.path), images_folder or table.path.parent, _now(), 0
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


def import_dataset(workspace: Workspace, name: str, table: CsvTable, columns: list[Column],
                   images_folder: Path | None = None) -> list[str]:
    """Create the dataset with all its rows in one transaction (a crash leaves no dataset; memory stays bounded:
    the rows go in a chunk at a time). Relative image paths are read from `images_folder` (default: the CSV's).
    Returns report notes. Images are fetched afterwards, by `fetch_media`, which can be interrupted and run
    again."""
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
        rows = _insert_rows(db, cursor.lastrowid, table, columns, mappings, 1, f"importing '{name}'",
                            images_folder)
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


def _to_fetch(workspace: Workspace, dataset: Dataset, store: BlobStore, rows: list[int] | None = None,
              page: int = 5_000) -> Iterator:
    """((row, column), ref) of each live image cell (of `rows`, else of all) not fetched yet, failed, or whose blob
    is gone; read a page at a time (each its own short read), so the fetch can write results meanwhile and memory
    stays bounded."""
    last, only = (0, ""), "" if rows is None else "AND m.row IN (SELECT value FROM json_each(?)) "
    while True:
        with workspace.catalog() as db:
            rows_read = db.execute(
                "SELECT m.row, m.column, m.ref, m.status, m.sha256 FROM media m JOIN dataset_rows r "
                f"USING (dataset_id, row) WHERE m.dataset_id = ? AND r.deleted = 0 {only}"
                "AND (m.row, m.column) > (?, ?) ORDER BY m.row, m.column LIMIT ?",
                (dataset.id, *([] if rows is None else [json.dumps(rows)]), *last, page)).fetchall()
        if not rows_read:
            return
        last = (rows_read[-1]["row"], rows_read[-1]["column"])
        yield from (((r["row"], r["column"]), r["ref"]) for r in rows_read
                    if r["status"] != "ok" or not store.path(r["sha256"]).is_file())


def fetch_media(workspace: Workspace, name: str, fetcher: MediaFetcher | None = None,
                rows: list[int] | None = None) -> dict[str, int]:
    """Fetch every image cell (of `rows`, else of all) that is not fetched yet or failed; results are committed as
    they arrive, so an interrupted fetch resumes where it stopped. Returns the count per status over the whole
    dataset."""
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

            todo = (sum(n for status, n in counts.items() if status != "ok")  # plus any ok whose blob is gone
                    if rows is None else None)
            fetcher.fetch_many(_to_fetch(workspace, dataset, fetcher.store, rows), save, total=todo or None,
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


@dataclass(frozen=True)
class RowFilter:
    """Which live rows a page shows; every filter set must hold."""
    classes: dict[str, str] = field(default_factory=dict)  # label column -> class ("" = unlabelled)
    status: str | None = None  # an image cell with this fetch status (ok, pending, http_error, ...)
    text: str | None = None  # this text in any cell, as a substring, ignoring ASCII case

    def conditions(self, dataset: Dataset) -> tuple[list[str], list]:
        """SQL conditions on `dataset_rows r`, with their parameters."""
        conditions, params = [], []
        for column, value in self.classes.items():
            if dataset.column(column).type != "label":
                raise DatasetError(f"column '{column}' of dataset '{dataset.name}' is not a label column; label "
                                   f"columns: {', '.join(dataset.of_type('label'))}")
            conditions.append(f"{_cell(column)} IS ?")
            params += [_cell_path(column), value or None]
        if self.status:
            conditions.append("r.row IN (SELECT row FROM media WHERE dataset_id = ? AND status = ?)")
            params += [dataset.id, self.status]
        if self.text:  # the stored JSON first (cheap, but it holds the column names too), then the cells themselves
            conditions.append("r.data LIKE ? ESCAPE '\\' AND EXISTS (SELECT 1 FROM json_each(r.data) "
                              "WHERE value LIKE ? ESCAPE '\\')")
            params += [_like(json.dumps(self.text, ensure_ascii=False)[1:-1]), _like(self.text)]
        return conditions, params


def _like(text: str) -> str:
    """A LIKE pattern for `text` anywhere (its % and _ taken literally)."""
    return "%" + re.sub(r"([%_\\])", r"\\\1", text) + "%"


def _cell(column: str) -> str:
    """SQL for one cell of `r.data`, its path (or key) the next parameter."""
    return ("(SELECT value FROM json_each(r.data) WHERE key = ?)" if '"' in column  # no JSON path can quote it
            else "json_extract(r.data, ?)")


def _cell_path(column: str) -> str:
    return column if '"' in column else f'$."{column}"'


def _tallied(db, dataset: Dataset, where: RowFilter) -> int | None:
    """How many live rows pass `where`, read from the tallies when they can tell (no filter, or one class, or one
    status of the only image column); None otherwise."""
    def tally(what: str, column: str = "", value: str | None = None) -> int:
        return db.execute("SELECT COALESCE(SUM(n), 0) FROM tallies WHERE dataset_id = ? AND what = ? AND column = ? "
                          "AND (? IS NULL OR value = ?)", (dataset.id, what, column, value, value)).fetchone()[0]

    images = dataset.of_type("image")
    if where.text or len(where.classes) + bool(where.status) > 1:
        return None
    for column, value in where.classes.items():
        return tally("label", column, value) if value else tally("rows") - tally("label", column)
    if where.status:
        return tally("media", images[0], where.status) if len(images) == 1 else None
    return tally("rows")


def rows_page(workspace: Workspace, name: str, limit: int, offset: int = 0,
              where: RowFilter = RowFilter()) -> tuple[int, pd.DataFrame]:
    """How many live rows pass `where`, and a page of them in row order (see `_frame` for the columns, plus each
    row's `version`), both read in one transaction. Fast at millions of rows: the count comes from the tallies when
    they can tell, and an unfiltered page is found through the index of live rows (an OFFSET over the joins would
    build every row it skips)."""
    dataset = get_dataset(workspace, name)
    select, params = _rows_select(dataset)
    conditions, args = where.conditions(dataset)
    with workspace.catalog() as db:
        db.execute("BEGIN")
        if conditions:
            rows = db.execute(f"{select} AND {' AND '.join(conditions)} ORDER BY r.row LIMIT ? OFFSET ?",
                              (*params, *args, limit, offset)).fetchall()
        else:
            rows = db.execute(f"{select} AND r.row >= (SELECT row FROM dataset_rows WHERE dataset_id = ? AND "
                              "deleted = 0 ORDER BY row LIMIT 1 OFFSET ?) ORDER BY r.row LIMIT ?",
                              (*params, dataset.id, offset, limit)).fetchall()
        total = _tallied(db, dataset, where)
        if total is None:
            total = db.execute("SELECT COUNT(*) FROM dataset_rows r WHERE r.dataset_id = ? AND r.deleted = 0 AND "
                               + " AND ".join(conditions), (dataset.id, *args)).fetchone()[0]
    frame = _frame(dataset, rows)
    frame["version"] = [row_version(r[3]) for r in rows]
    return total, frame


def row_offset(workspace: Workspace, name: str, row: int) -> int:
    """Where live row `row` sits among the live rows (its offset in an unfiltered page), through the index."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        return db.execute("SELECT COUNT(*) FROM dataset_rows WHERE dataset_id = ? AND deleted = 0 AND row < ?",
                          (dataset.id, row)).fetchone()[0]


def row_version(data: str) -> str:
    """A row's version as stored (its cells' JSON): an edit made from a page says which version it was shown, and
    is refused if the row has changed since."""
    return hashlib.sha256(data.encode()).hexdigest()[:16]


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


def _live_rows(db, dataset: Dataset, rows: list[int], seen: dict[int, str] | None) -> dict[int, str]:
    """Each row's stored cells (JSON); every row must be live, and, where `seen` gives the version a page showed,
    unchanged since (else StaleEdit, with the current cells). Call inside a write transaction."""
    found = {r["row"]: r for r in db.execute(
        "SELECT row, data, deleted FROM dataset_rows WHERE dataset_id = ? AND row IN (SELECT value FROM json_each(?))",
        (dataset.id, json.dumps(rows)))}
    stale = {}
    for row in rows:
        if row not in found or (found[row]["deleted"] and seen is None):
            raise DatasetError(f"dataset '{dataset.name}' has no row {row}" + (" (it was deleted)" if found.get(row)
                                                                              else ""))
        if seen is not None and (found[row]["deleted"] or row_version(found[row]["data"]) != seen.get(row)):
            stale[row] = None if found[row]["deleted"] else json.loads(found[row]["data"])
    if stale:
        raise StaleEdit(dataset.name, stale)
    return {row: found[row]["data"] for row in rows}


def set_cells(workspace: Workspace, name: str, rows: list[int], column: str, value: str,
              seen: dict[int, str] | None = None) -> tuple[int, dict[int, str | None], str | None]:
    """Give one cell (a label, a text) of each of `rows` the same value, in one transaction kept in history as one
    change. `seen`: row -> the version a page showed (see `row_version`); any row changed since refuses the whole
    edit. Returns (the change's history id, each row's old value, the new value). Image cells are not edited: add
    rows instead."""
    dataset = get_dataset(workspace, name)
    kind = dataset.column(column).type
    if kind in ("image", "ignore"):
        raise DatasetError(f"column '{column}' is an {kind} column; only label, text and json cells can be edited")
    if not rows:
        raise DatasetError("no rows selected: pick the rows to change")
    new = (value.strip() or None) if kind == "label" else value
    with workspace.catalog() as db:
        db.execute("BEGIN IMMEDIATE")  # no other writer between the check and the change
        old = {}
        for row, data in _live_rows(db, dataset, rows, seen).items():
            cells = json.loads(data)
            old[row], cells[column] = cells[column], new
            db.execute("UPDATE dataset_rows SET data = ? WHERE dataset_id = ? AND row = ?",
                       (json.dumps(cells, ensure_ascii=False), dataset.id, row))
        change = (_record(db, dataset.id, "set", row=rows[0], column=column, old=old[rows[0]], new=new)
                  if len(rows) == 1 else
                  _record(db, dataset.id, "relabel", column=column, new=new, old={str(r): v for r, v in old.items()}))
    return change, old, new


def set_value(workspace: Workspace, name: str, row: int, column: str, value: str) -> tuple[str | None, str | None]:
    """Change one cell (a label, a text); returns (old, new)."""
    _, old, new = set_cells(workspace, name, [row], column, value)
    return old[row], new


def delete_rows(workspace: Workspace, name: str, rows: list[int], seen: dict[int, str] | None = None) -> int:
    """Delete rows: all or none (each must be live and, with `seen`, unchanged). Returns the change's history id."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        db.execute("BEGIN IMMEDIATE")
        _live_rows(db, dataset, rows, seen)
        db.executemany("UPDATE dataset_rows SET deleted = 1 WHERE dataset_id = ? AND row = ?",
                       [(dataset.id, r) for r in rows])
        return _record(db, dataset.id, "delete_rows", rows=sorted(rows))


UNDOABLE = {"set", "relabel", "delete_rows"}


def undo(workspace: Workspace, name: str, change: int) -> int:
    """Undo one change from the history (an edit, a relabel, a deletion), kept in history itself: refused if it was
    undone already, or if any of its rows changed since (StaleEdit, with their current cells). Returns the undo's
    history id."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        db.execute("BEGIN IMMEDIATE")
        found = db.execute("SELECT action, detail FROM history WHERE id = ? AND dataset_id = ?",
                           (change, dataset.id)).fetchone()
        if found is None or found["action"] not in UNDOABLE:
            raise DatasetError(f"dataset '{name}' has no change {change} that can be undone (edits, relabels and "
                               "deletions can)")
        if db.execute("SELECT 1 FROM history WHERE dataset_id = ? AND action = 'undo' AND detail ->> 'of' = ?",
                      (dataset.id, change)).fetchone():
            raise DatasetError(f"change {change} of dataset '{name}' was undone already")
        detail = json.loads(found["detail"])
        if found["action"] == "delete_rows":
            rows = detail["rows"]
            gone = {r["row"] for r in db.execute("SELECT row FROM dataset_rows WHERE dataset_id = ? AND deleted = 1 "
                                                 "AND row IN (SELECT value FROM json_each(?))",
                                                 (dataset.id, json.dumps(rows)))}
            if len(gone) < len(rows):
                raise DatasetError(f"rows {sorted(set(rows) - gone)} of dataset '{name}' are not deleted any more")
            db.executemany("UPDATE dataset_rows SET deleted = 0 WHERE dataset_id = ? AND row = ?",
                           [(dataset.id, r) for r in rows])
        else:
            column, new = detail["column"], detail["new"]
            old = {int(r): v for r, v in detail["old"].items()} if found["action"] == "relabel" else {
                detail["row"]: detail["old"]}
            current = {row: json.loads(data) for row, data in _live_rows(db, dataset, list(old), None).items()}
            stale = {row: cells for row, cells in current.items() if cells.get(column) != new}
            if stale:
                raise StaleEdit(name, stale)
            for row, cells in current.items():
                cells[column] = old[row]
                db.execute("UPDATE dataset_rows SET data = ? WHERE dataset_id = ? AND row = ?",
                           (json.dumps(cells, ensure_ascii=False), dataset.id, row))
        return _record(db, dataset.id, "undo", of=change, undid=found["action"])


def history(workspace: Workspace, name: str, last: int | None = None) -> list[dict]:
    """The dataset's changes, oldest first (the `last` ones only, if given), each with its `id`."""
    dataset = get_dataset(workspace, name)
    with workspace.catalog() as db:
        events = db.execute("SELECT id, at, action, detail FROM history WHERE dataset_id = ? ORDER BY id DESC LIMIT ?",
                            (dataset.id, -1 if last is None else last)).fetchall()
    return [{"id": r["id"], "at": r["at"], "action": r["action"], **json.loads(r["detail"])} for r in reversed(events)]


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
