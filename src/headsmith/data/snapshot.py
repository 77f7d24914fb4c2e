"""Snapshots: immutable, content-hashed Parquet + manifest.json exports of labelled data, the only thing training reads."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image
from rich.progress import track

from headsmith.data.dataset import check_name, file_sha256, get_dataset, row_chunks, summary
from headsmith.data.media import BlobStore, DamagedBlob
from headsmith.errors import HeadsmithError, SnapshotError
from headsmith.files import atomic_path, give_back, map_file, publish_folder
from headsmith.workspace import Workspace

FORMAT_VERSION = 2  # 2: the invalid rows and conflicting duplicates are files beside the manifest, not in it
SNAPSHOT_TYPES = ("text-classification", "image-classification")
DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"
INVALID_FILE = "invalid_rows.jsonl"
CONFLICTS_FILE = "conflicting_duplicates.jsonl"
ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default: written a group at a time, the file is what one write of all gave
LISTED = 10  # rows named in an error message; the rest are counted


@dataclass(frozen=True)
class HeadLabels:
    """Where a head's labels came from and which classes it has (sorted; the index of a class is its label id)."""

    column: str
    classes: list[str]
    counts: dict[str, int]


@dataclass(frozen=True)
class SnapshotManifest:
    id: str
    name: str
    type: str
    input_column: str
    heads: dict[str, HeadLabels]
    rows: int
    sha256: str  # of data.parquet
    source: dict
    invalid_rows: int = 0  # how many were dropped; which and why: Snapshot.invalid_rows()
    leakage: dict = field(default_factory=dict)  # {"conflicting_duplicates": how many}: Snapshot.conflicting_duplicates()
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str) -> "SnapshotManifest":
        raw = json.loads(text)
        raw["heads"] = {h: HeadLabels(**v) for h, v in raw["heads"].items()}
        if raw.get("format_version", 1) == 1:  # the lists themselves were in the manifest
            raw["invalid_rows"] = len(raw.get("invalid_rows", []))
            raw["leakage"] = {k: len(v) for k, v in raw.get("leakage", {}).items()}
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def ref(self) -> dict:
        """What a model's lineage records about the snapshot it was trained or tested on."""
        return {"id": self.id, "name": self.name, "sha256": self.sha256}


@dataclass(frozen=True)
class Snapshot:
    manifest: SnapshotManifest
    path: Path
    blobs: BlobStore
    cache: Path  # the workspace's cache folder: `inputs` keeps a memory-mapped copy of the input column there

    def frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The rows: `row` (in the dataset), `input` (text, or an image's sha256 with its URL in `source`), and one
        label column per head (None = unlabelled); or only `columns`."""
        return pd.read_parquet(self.path / DATA_FILE, columns=columns)

    def labels(self) -> pd.DataFrame:
        """Every column but `input` (which `inputs` reads a batch at a time), with `position`: the row's place in
        the data file. What splits, training and metrics hold for every row."""
        import pyarrow.parquet as pq

        names = [name for name in pq.read_schema(self.path / DATA_FILE).names if name != "input"]
        return self.frame(names).rename_axis("position").reset_index()

    def inputs(self, positions) -> list:
        """The stored inputs (texts, or images' sha256) at `positions`, from a memory-mapped Arrow copy of the input
        column: reading a batch loads only its rows, whatever the snapshot's size."""
        import pyarrow as pa

        column, mapped = self._input_column
        values = column.take(pa.array(np.asarray(positions, dtype=np.int64))).to_pylist()
        give_back(mapped)  # reading every row over time (an evaluation) leaves the process no larger
        return values

    def input_hashes(self) -> np.ndarray:
        """A 64-bit hash of every row's input, in row order: inputs compared across millions of rows in 8 bytes
        each (two different inputs share a hash about once in 10^19 pairs)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(self.path / DATA_FILE).iter_batches(batch_size=65_536, columns=["input"])
        return np.concatenate([pd.util.hash_array(np.asarray(pc.cast(batch.column(0), "string").to_numpy(
            zero_copy_only=False), dtype=object)) for batch in batches] or [np.zeros(0, np.uint64)])

    def __getstate__(self):  # to a Ray actor or a DataLoader worker: the paths, not the mapped input column
        return {key: value for key, value in self.__dict__.items() if key != "_input_column"}

    @functools.cached_property
    def _input_column(self):
        """The input column over a read-only memory mapping of its Arrow copy, and the mapping."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.cache / "inputs" / f"{self.manifest.sha256[:32]}.arrow"
        if not path.exists():  # made once per snapshot; two processes making it at once write the same bytes
            path.parent.mkdir(parents=True, exist_ok=True)
            data = pq.ParquetFile(self.path / DATA_FILE)
            schema = pa.schema([data.schema_arrow.field("input")])
            with atomic_path(path) as tmp, pa.ipc.new_file(str(tmp), schema) as writer:
                for batch in data.iter_batches(batch_size=65_536, columns=["input"]):
                    writer.write_batch(batch)
        mapped = map_file(path)
        return pa.ipc.open_file(pa.py_buffer(mapped)).read_all().column("input"), mapped

    def invalid_rows(self) -> Iterator[dict]:
        """The rows left out, in row order: {row, line, reason}."""
        return self._listing(INVALID_FILE, "invalid_rows")

    def conflicting_duplicates(self) -> Iterator[dict]:
        """Identical inputs labelled differently for a head: {head, rows, labels}."""
        return self._listing(CONFLICTS_FILE, "leakage", "conflicting_duplicates")

    def _listing(self, name: str, *old_keys: str) -> Iterator[dict]:
        if self.manifest.format_version == 1:
            listing = json.loads((self.path / MANIFEST_FILE).read_text())
            for key in old_keys:
                listing = listing.get(key, [])
            yield from listing
            return
        with open(self.path / name, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f)

    def load_inputs(self, values: list[str]) -> list:
        """What a backbone's preprocess takes: texts as they are; images decoded (RGB) from the blob store, each
        checked against its sha256 first (hashing costs little beside decoding)."""
        if self.manifest.type != "image-classification":
            return list(values)
        try:
            return [Image.open(io.BytesIO(self.blobs.read(sha))).convert("RGB") for sha in values]
        except DamagedBlob as e:
            frame = self.frame()
            row = frame[frame["input"] == e.sha256].iloc[0]
            dataset = self.manifest.source.get("dataset", "DATASET")
            raise HeadsmithError(f"snapshot '{self.manifest.name}', row {row['row']} ({row['source']}): the stored "
                                 f"image {e}. `headsmith dataset fetch {dataset} --verify` fetches damaged images "
                                 "again; then run this again") from None


def _token_counter(backbone: str):
    from transformers import AutoTokenizer

    from headsmith.models.backbones import resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(backbone))
    return tokenizer, lambda text: len(tokenizer(text, truncation=False)["input_ids"])


def _duckdb(spill: Path):
    """DuckDB for whole-snapshot questions (duplicates, diffs) over the Parquet files: it streams them, and spills
    to `spill` beyond a fixed memory budget, so no snapshot size is too big for this machine."""
    import duckdb

    return duckdb.connect(config={"memory_limit": "256MB", "threads": 1, "temp_directory": str(spill),
                                  "preserve_insertion_order": False})


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def conflicting_duplicates(data: Path, heads: list[str], spill: Path) -> Iterator[dict]:
    """Identical inputs labelled differently for the same head (the model is asked to learn both answers), per head
    in the order of their first row. Grouped first by a 64-bit hash of the input (small, fixed-size groups that
    spill to disk), then exactly by input among those candidates: a hash collision can only add a candidate."""
    db = _duckdb(spill)
    for head in heads:
        found = db.execute(
            f"WITH labelled AS (SELECT row, input, {_quoted(head)} AS label FROM read_parquet(?) "
            f"WHERE {_quoted(head)} IS NOT NULL), "
            "candidates AS (SELECT hash(input) AS h FROM labelled GROUP BY h HAVING min(label) != max(label)) "
            "SELECT list(row ORDER BY row), list(DISTINCT label ORDER BY label) FROM labelled "
            "WHERE hash(input) IN (SELECT h FROM candidates) "
            "GROUP BY input HAVING COUNT(DISTINCT label) > 1 ORDER BY min(row)", [str(data)])
        while batch := found.fetchmany(1000):
            yield from ({"head": head, "rows": rows, "labels": labels} for rows, labels in batch)
    db.close()


class _Rows:
    """The snapshot's rows, written to Parquet a row group at a time as chunks arrive: memory holds one group."""

    def __init__(self, path: Path):
        self.path, self.writer, self.schema, self.pending, self.count = path, None, None, [], 0

    def add(self, rows: pd.DataFrame) -> None:
        import pyarrow as pa

        table = pa.Table.from_pandas(rows, preserve_index=False, schema=self.schema)
        if self.schema is None:  # a head no row of the first chunk labels has no type yet: it holds strings
            self.schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema],
                                    metadata=table.schema.metadata)
            table = table.cast(self.schema)
        self.pending.append(table)
        self.count += len(table)
        while sum(len(t) for t in self.pending) >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(self.pending)
        group, rest = table.slice(0, rows).combine_chunks(), table.slice(rows)
        self.writer = self.writer or pq.ParquetWriter(self.path, self.schema, compression="snappy")
        self.writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
        self.pending = [rest] if len(rest) else []

    def close(self) -> None:
        import pyarrow as pa

        if self.schema is not None and (self.pending or self.writer is None):  # the last group, or an empty file
            self._flush(sum(len(t) for t in self.pending))
        if self.writer is not None:
            self.writer.close()
        pa.default_memory_pool().release_unused()  # what the groups used goes back to the system, not kept


class _Listing:
    """A list that grows with the rows (invalid rows, damaged images): kept in a file, its first few in memory."""

    def __init__(self, path: Path):
        self.path, self.count, self.first = path, 0, []
        self.file = open(path, "w", encoding="utf-8")

    def add(self, item: dict) -> None:
        self.file.write(json.dumps(item, ensure_ascii=False) + "\n")
        self.count += 1
        if len(self.first) < LISTED:
            self.first.append(item)

    def close(self) -> None:
        self.file.close()

    def more(self) -> str:
        return f"\n  ... and {self.count - LISTED} more" if self.count > LISTED else ""


def _chunk_rows(frame: pd.DataFrame, want: str, input_column: str, labels: dict[str, str], count_tokens,
                limit: int | None, backbone: str | None) -> tuple[pd.DataFrame, pd.Series]:
    """A chunk of a dataset's rows as snapshot rows (`row`, `input`, [`source`], one column per head) and why each
    is invalid ('' when it is not)."""
    rows = pd.DataFrame({"row": frame["row"].astype("int64")})
    reasons = pd.Series("", index=frame.index, dtype=object)
    if want == "image":
        rows["input"] = frame[f"{input_column}:sha256"]
        rows["source"] = frame[input_column]
        bad = frame[f"{input_column}:status"] != "ok"
        reasons[bad] = frame[f"{input_column}:status"][bad] + ": " + frame[f"{input_column}:detail"][bad]
    else:
        rows["input"] = frame[input_column].fillna("")
        reasons[rows["input"].str.strip() == ""] = f"empty {input_column}"
        if count_tokens:
            tokens = rows["input"].map(count_tokens)
            over = (tokens > limit) & (reasons == "")
            reasons[over] = tokens[over].map(lambda n: f"{n} tokens, over the {limit}-token limit of {backbone}")
    for head, column in labels.items():
        rows[head] = frame[column].where(frame[column].notna(), None)
    reasons[rows[list(labels)].isna().all(axis=1) & (reasons == "")] = "no label for any head"
    return rows, reasons


def create_snapshot(
    workspace: Workspace,
    dataset: str,
    *,
    name: str,
    input_column: str,
    labels: dict[str, str],
    type: str = "text-classification",
    max_invalid: float = 0.05,
    backbone: str | None = None,
    max_tokens: int | None = None,
    chunk_rows: int = 50_000,
) -> Snapshot:
    """Validate a dataset's live rows and freeze them into an immutable snapshot; written atomically, never half.
    With `backbone`, texts longer than its token limit (or `max_tokens`) are invalid rows. The rows are read,
    checked and written `chunk_rows` at a time, so memory does not grow with the dataset."""
    check_name(name, "snapshot")
    if type not in SNAPSHOT_TYPES:
        raise SnapshotError(f"--type {type}: choose one of {', '.join(SNAPSHOT_TYPES)}")
    if not labels:
        raise SnapshotError("no heads: pass at least one --label HEAD=COLUMN")
    ds = get_dataset(workspace, dataset)
    want = "image" if type == "image-classification" else "text"
    problems = []
    if ds.column(input_column).type != want:
        problems.append(f"--input {input_column}: a {type} snapshot needs a {want} column, and '{input_column}' is "
                        f"{ds.column(input_column).type} (re-import with --column {input_column}={want} if it is one)")
    for head, column in labels.items():
        if ds.column(column).type != "label":
            problems.append(f"--label {head}={column}: '{column}' is a {ds.column(column).type} column, not a label "
                            f"column (re-import with --column {column}=label if it holds classes)")
    if problems:
        raise SnapshotError("\n".join(problems))
    _refuse_taken_name(workspace, name)
    count_tokens = limit = None
    if backbone and want == "text":
        tokenizer, count_tokens = _token_counter(backbone)
        limit = max_tokens or tokenizer.model_max_length

    workspace.snapshots_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=workspace.snapshots_dir))
    try:
        data, store, total = _Rows(staging / DATA_FILE), BlobStore(workspace.blobs_dir), 0
        invalid, damaged = _Listing(staging / INVALID_FILE), _Listing(staging / "damaged.jsonl")
        counts = {head: Counter() for head in labels}
        for frame in track(row_chunks(workspace, dataset, chunk_rows), description=f"checking '{dataset}'",
                           total=-(-summary(workspace, dataset)["rows"] // chunk_rows), transient=True):
            total += len(frame)
            rows, reasons = _chunk_rows(frame, want, input_column, labels, count_tokens, limit, backbone)
            if want == "image":  # every image the snapshot names is re-hashed: a damaged stored copy stops it
                valid = rows["input"][reasons == ""]
                for _, r in frame.loc[valid.index[~valid.map(store.intact).astype(bool)]].iterrows():
                    damaged.add({"row": int(r["row"]), "line": int(r["line"]), "ref": r[input_column],
                                 "path": str(store.path(r[f"{input_column}:sha256"]))})
            for r, line, why in zip(rows["row"][reasons != ""], frame["line"][reasons != ""], reasons[reasons != ""]):
                invalid.add({"row": int(r), "line": int(line), "reason": why})
            rows = rows[reasons == ""].reset_index(drop=True)
            data.add(rows)
            for head in labels:
                counts[head].update(rows[head].dropna())
        data.close()
        invalid.close()
        damaged.close()
        if not total:
            raise SnapshotError(f"dataset '{dataset}' has no rows left")
        if damaged.count:
            listing = "\n".join(f"  row {r['row']} (line {r['line']}): {r['ref']}: {r['path']}" for r in damaged.first)
            raise SnapshotError(f"dataset '{dataset}': the stored copy of {damaged.count} image(s) is missing or no "
                                f"longer matches its sha256 (a disk error, or a file changed by hand):\n{listing}"
                                f"{damaged.more()}\n`headsmith dataset fetch {dataset} --verify` fetches them again; "
                                "then create the snapshot again")
        (staging / "damaged.jsonl").unlink()
        share = invalid.count / total
        if share > max_invalid:
            listing = "\n".join(f"  row {r['row']} (line {r['line']}): {r['reason']}" for r in invalid.first)
            raise SnapshotError(f"dataset '{dataset}': {invalid.count} of {total} rows ({share:.1%}) are invalid, "
                                f"above the invalid data criterion of {max_invalid:.1%}:\n{listing}{invalid.more()}\n"
                                "Fix or delete those rows (headsmith dataset show/set/delete-rows), or raise "
                                "--max-invalid to drop them.")
        heads = {}
        for head, column in labels.items():
            if len(counts[head]) < 2:
                only = f"only the class '{next(iter(counts[head]))}'" if counts[head] else "no labels"
                raise SnapshotError(f"head '{head}' (column '{column}' of dataset '{dataset}') has {only} in its valid "
                                    "rows; a head needs at least two mutually exclusive classes")
            classes = sorted(counts[head])
            heads[head] = HeadLabels(column=column, classes=classes, counts={c: counts[head][c] for c in classes})
        conflicts = _Listing(staging / CONFLICTS_FILE)
        for conflict in conflicting_duplicates(staging / DATA_FILE, list(heads), spill=staging / "spill"):
            conflicts.add(conflict)
        conflicts.close()
        shutil.rmtree(staging / "spill", ignore_errors=True)
        return _publish(workspace, staging, data.count, name=name, type=type, input_column=input_column, heads=heads,
                        invalid_rows=invalid.count, leakage={"conflicting_duplicates": conflicts.count},
                        source={"dataset": dataset, "file": ds.source, "sha256": ds.source_sha256})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_taken_name(workspace: Workspace, name: str) -> None:
    with workspace.catalog() as db:
        if db.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone():
            raise SnapshotError(f"a snapshot named '{name}' already exists; snapshots never change, "
                                "so pick another name")


def _publish(workspace: Workspace, staging: Path, rows: int, **fields) -> Snapshot:
    """Move a finished staging folder into place with its catalog row: both, or (after any failure) neither."""
    _refuse_taken_name(workspace, fields["name"])
    sha = file_sha256(staging / DATA_FILE)
    manifest = SnapshotManifest(id=sha[:12], sha256=sha, rows=rows,
                                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    final = workspace.snapshots_dir / manifest.id
    if final.exists():
        raise SnapshotError(f"the same rows and labels are already snapshot {manifest.id}; use that one")
    for f in staging.iterdir():
        os.chmod(f, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    # The catalog row commits only if the rename succeeded; a crash before it leaves only a staging folder.
    try:
        with workspace.catalog() as db:
            db.execute("INSERT INTO snapshots (id, name, sha256, type, rows, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (manifest.id, manifest.name, sha, manifest.type, manifest.rows, manifest.created_at))
            publish_folder(staging, final)
    except sqlite3.IntegrityError:  # another process took the name (or the same rows) a moment ago
        raise SnapshotError(f"snapshot '{manifest.name}' ({manifest.id}) was created by another process just now; "
                            "pick another name") from None
    return Snapshot(manifest, final, BlobStore(workspace.blobs_dir), workspace.root / "cache")


def list_snapshots(workspace: Workspace) -> list[dict]:
    with workspace.catalog() as db:
        return [dict(r) for r in db.execute("SELECT * FROM snapshots ORDER BY created_at, name")]


def load_snapshot(workspace: Workspace, ref: str) -> Snapshot:
    """Find a snapshot by name or id, and refuse it if its data no longer matches the hash it was created with."""
    with workspace.catalog() as db:
        found = db.execute("SELECT id FROM snapshots WHERE name = ? OR id = ?", (ref, ref)).fetchone()
        known = [r["name"] for r in db.execute("SELECT name FROM snapshots ORDER BY name")]
    if not found:
        hint = f" (snapshots: {', '.join(known)})" if known else " (the workspace has none yet: headsmith snapshot create)"
        raise SnapshotError(f"no snapshot named '{ref}' in {workspace.root}{hint}")
    path = workspace.snapshots_dir / found["id"]
    manifest = SnapshotManifest.from_json((path / MANIFEST_FILE).read_text())
    actual = file_sha256(path / DATA_FILE)
    if actual != manifest.sha256:
        raise SnapshotError(f"snapshot '{manifest.name}' ({path / DATA_FILE}) does not match its sha256: expected "
                            f"{manifest.sha256}, found {actual}. It was changed after it was created; create it again.")
    return Snapshot(manifest, path, BlobStore(workspace.blobs_dir), workspace.root / "cache")


def diff_snapshots(a: Snapshot, b: Snapshot) -> dict:
    """Rows are matched by input (the text, or the image's hash): added, removed, relabelled (among inputs that
    appear once on each side); counts per head. Computed by DuckDB over the two files, in bounded memory."""
    shared = [h for h in a.manifest.heads if h in b.manifest.heads]
    with tempfile.TemporaryDirectory(prefix="headsmith-diff-") as spill:
        db = _duckdb(Path(spill))
        files = [str(a.path / DATA_FILE), str(b.path / DATA_FILE)]
        added, removed = db.execute(
            "WITH a AS (SELECT input, COUNT(*) AS n FROM read_parquet(?) GROUP BY input), "
            "b AS (SELECT input, COUNT(*) AS n FROM read_parquet(?) GROUP BY input) "
            "SELECT COALESCE(SUM(GREATEST(COALESCE(b.n, 0) - COALESCE(a.n, 0), 0)), 0), "
            "COALESCE(SUM(GREATEST(COALESCE(a.n, 0) - COALESCE(b.n, 0), 0)), 0) "
            "FROM a FULL OUTER JOIN b USING (input)", files).fetchone()
        relabelled = 0
        if shared:
            picks = ", ".join(f"any_value({_quoted(h)}) AS {_quoted(h)}" for h in shared)
            differ = " OR ".join(f"a.{_quoted(h)} IS DISTINCT FROM b.{_quoted(h)}" for h in shared)
            relabelled = db.execute(
                f"WITH a AS (SELECT input, {picks} FROM read_parquet(?) GROUP BY input HAVING COUNT(*) = 1), "
                f"b AS (SELECT input, {picks} FROM read_parquet(?) GROUP BY input HAVING COUNT(*) = 1) "
                f"SELECT COUNT(*) FROM a JOIN b USING (input) WHERE {differ}", files).fetchone()[0]
        db.close()
    heads = {}
    for head in dict.fromkeys([*a.manifest.heads, *b.manifest.heads]):
        before = a.manifest.heads[head].counts if head in a.manifest.heads else {}
        after = b.manifest.heads[head].counts if head in b.manifest.heads else {}
        heads[head] = {c: (before.get(c, 0), after.get(c, 0)) for c in sorted(set(before) | set(after))}
    return {"a": a.manifest.name, "b": b.manifest.name, "rows": (a.manifest.rows, b.manifest.rows),
            "added": int(added), "removed": int(removed), "relabelled": int(relabelled), "heads": heads}


def snapshot_differences(train: Snapshot, test: Snapshot, heads: list[str]) -> list[str]:
    if train.manifest.type != test.manifest.type:
        return [f"'{train.manifest.name}' is {train.manifest.type} but '{test.manifest.name}' is {test.manifest.type}"]
    problems = []
    for head in heads:
        if head not in test.manifest.heads:
            problems.append(f"head '{head}' is not labelled in the test snapshot '{test.manifest.name}' "
                            f"(it labels: {', '.join(test.manifest.heads)})")
            continue
        ours, theirs = set(train.manifest.heads[head].classes), set(test.manifest.heads[head].classes)
        if ours != theirs:
            problems.append(f"head '{head}' classes differ: only in '{train.manifest.name}': {sorted(ours - theirs)}, "
                            f"only in '{test.manifest.name}': {sorted(theirs - ours)}")
    return problems
