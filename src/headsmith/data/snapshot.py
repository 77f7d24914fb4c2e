"""Snapshots: immutable, content-hashed Parquet + manifest.json exports of labelled data, the only thing training reads."""

from __future__ import annotations

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

import pandas as pd
from PIL import Image
from rich.progress import track

from headsmith.data.dataset import check_name, file_sha256, get_dataset, rows_frame
from headsmith.data.media import BlobStore, DamagedBlob
from headsmith.errors import HeadsmithError, SnapshotError
from headsmith.files import publish_folder
from headsmith.workspace import Workspace

FORMAT_VERSION = 1
SNAPSHOT_TYPES = ("text-classification", "image-classification")
DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"


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
    invalid_rows: list[dict] = field(default_factory=list)
    leakage: dict = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str) -> "SnapshotManifest":
        raw = json.loads(text)
        raw["heads"] = {h: HeadLabels(**v) for h, v in raw["heads"].items()}
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

    def frame(self) -> pd.DataFrame:
        """The rows: `row` (in the dataset), `input` (text, or an image's sha256 with its URL in `source`), and one
        label column per head (None = unlabelled)."""
        return pd.read_parquet(self.path / DATA_FILE)

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


def conflicting_duplicates(rows: pd.DataFrame, heads: list[str]) -> list[dict]:
    """Identical inputs labelled differently for the same head: the model is asked to learn both answers."""
    conflicts = []
    for head in heads:
        labelled = rows[rows[head].notna()]
        grouped = labelled.groupby("input", sort=False)[head].nunique()
        for value in grouped[grouped > 1].index:
            same = labelled[labelled["input"] == value]
            conflicts.append({"head": head, "rows": same["row"].astype(int).tolist(),
                              "labels": sorted(same[head].unique().tolist())})
    return conflicts


def _refuse_damaged_blobs(store: BlobStore, rows: pd.DataFrame, column: str, dataset: str) -> None:
    """Every image the snapshot will name is re-hashed: one whose stored copy is missing or changed stops it."""
    shas = rows[f"{column}:sha256"]
    damaged = {sha for sha in track(shas.unique(), description=f"checking {shas.nunique()} stored images",
                                    transient=True, disable=len(shas) < 1000) if not store.intact(sha)}
    if damaged:
        hit = rows[shas.isin(damaged)]
        listing = "\n".join(f"  row {r['row']} (line {r['line']}): {r[column]}: {store.path(r[f'{column}:sha256'])}"
                            for _, r in hit.head(10).iterrows())
        more = f"\n  ... and {len(hit) - 10} more" if len(hit) > 10 else ""
        raise SnapshotError(f"dataset '{dataset}': the stored copy of {len(hit)} image(s) is missing or no longer "
                            f"matches its sha256 (a disk error, or a file changed by hand):\n{listing}{more}\n"
                            f"`headsmith dataset fetch {dataset} --verify` fetches them again; then create the "
                            "snapshot again")


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
) -> Snapshot:
    """Validate a dataset's live rows and freeze them into an immutable snapshot; written atomically, never half.
    With `backbone`, texts longer than its token limit (or `max_tokens`) are invalid rows."""
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

    frame = rows_frame(workspace, dataset)
    if frame.empty:
        raise SnapshotError(f"dataset '{dataset}' has no rows left")
    rows = pd.DataFrame({"row": frame["row"].astype("int64")})
    reasons = pd.Series("", index=frame.index, dtype=object)
    if want == "image":
        rows["input"] = frame[f"{input_column}:sha256"]
        rows["source"] = frame[input_column]
        bad = frame[f"{input_column}:status"] != "ok"
        reasons[bad] = frame[f"{input_column}:status"][bad] + ": " + frame[f"{input_column}:detail"][bad]
        _refuse_damaged_blobs(BlobStore(workspace.blobs_dir), frame[~bad], input_column, dataset)
    else:
        rows["input"] = frame[input_column].fillna("")
        reasons[rows["input"].str.strip() == ""] = f"empty {input_column}"
        if backbone:
            tokenizer, count = _token_counter(backbone)
            limit = max_tokens or tokenizer.model_max_length
            tokens = rows["input"].map(count)
            over = (tokens > limit) & (reasons == "")
            reasons[over] = tokens[over].map(lambda n: f"{n} tokens, over the {limit}-token limit of {backbone}")
    for head, column in labels.items():
        rows[head] = frame[column].where(frame[column].notna(), None)
    reasons[rows[list(labels)].isna().all(axis=1) & (reasons == "")] = "no label for any head"

    invalid = reasons != ""
    invalid_rows = [{"row": int(r), "line": int(line), "reason": why}
                    for r, line, why in zip(rows["row"][invalid], frame["line"][invalid], reasons[invalid])]
    share = len(invalid_rows) / len(rows)
    if share > max_invalid:
        listing = "\n".join(f"  row {r['row']} (line {r['line']}): {r['reason']}" for r in invalid_rows[:10])
        more = f"\n  ... and {len(invalid_rows) - 10} more" if len(invalid_rows) > 10 else ""
        raise SnapshotError(f"dataset '{dataset}': {len(invalid_rows)} of {len(rows)} rows ({share:.1%}) are invalid, "
                            f"above the invalid data criterion of {max_invalid:.1%}:\n{listing}{more}\n"
                            "Fix or delete those rows (headsmith dataset show/set/delete-rows), or raise --max-invalid "
                            "to drop them.")
    rows = rows[~invalid].reset_index(drop=True)

    heads = {}
    for head, column in labels.items():
        counts = rows[head].value_counts()
        if len(counts) < 2:
            only = f"only the class '{counts.index[0]}'" if len(counts) else "no labels"
            raise SnapshotError(f"head '{head}' (column '{column}' of dataset '{dataset}') has {only} in its valid "
                                "rows; a head needs at least two mutually exclusive classes")
        classes = sorted(counts.index)
        heads[head] = HeadLabels(column=column, classes=classes, counts={c: int(counts[c]) for c in classes})

    return _write(workspace, rows, name=name, type=type, input_column=input_column, heads=heads,
                  invalid_rows=invalid_rows, leakage={"conflicting_duplicates": conflicting_duplicates(rows, list(heads))},
                  source={"dataset": dataset, "file": ds.source, "sha256": ds.source_sha256})


def _write(workspace: Workspace, rows: pd.DataFrame, **fields) -> Snapshot:
    workspace.snapshots_dir.mkdir(parents=True, exist_ok=True)
    with workspace.catalog() as db:
        if db.execute("SELECT 1 FROM snapshots WHERE name = ?", (fields["name"],)).fetchone():
            raise SnapshotError(f"a snapshot named '{fields['name']}' already exists; snapshots never change, "
                                "so pick another name")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=workspace.snapshots_dir))
    try:
        rows.to_parquet(staging / DATA_FILE, index=False)
        sha = file_sha256(staging / DATA_FILE)
        manifest = SnapshotManifest(id=sha[:12], sha256=sha, rows=len(rows),
                                    created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        final = workspace.snapshots_dir / manifest.id
        if final.exists():
            raise SnapshotError(f"the same rows and labels are already snapshot {manifest.id}; use that one")
        for f in (DATA_FILE, MANIFEST_FILE):
            os.chmod(staging / f, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        # The catalog row commits only if the rename succeeded; a crash before it leaves only a staging folder.
        try:
            with workspace.catalog() as db:
                db.execute("INSERT INTO snapshots (id, name, sha256, type, rows, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (manifest.id, manifest.name, sha, manifest.type, manifest.rows, manifest.created_at))
                publish_folder(staging, final)
        except sqlite3.IntegrityError:  # another process took the name (or the same rows) a moment ago
            raise SnapshotError(f"snapshot '{manifest.name}' ({manifest.id}) was created by another process just now; "
                                "pick another name") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Snapshot(manifest, final, BlobStore(workspace.blobs_dir))


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
    return Snapshot(manifest, path, BlobStore(workspace.blobs_dir))


def diff_snapshots(a: Snapshot, b: Snapshot) -> dict:
    """Rows are matched by input (the text, or the image's hash): added, removed, relabelled; counts per head."""
    fa, fb = a.frame(), b.frame()
    inputs_a, inputs_b = Counter(fa["input"]), Counter(fb["input"])
    shared_heads = [h for h in a.manifest.heads if h in b.manifest.heads]
    unique_a = fa[fa["input"].map(inputs_a) == 1].set_index("input")
    unique_b = fb[fb["input"].map(inputs_b) == 1].set_index("input")
    common = unique_a.index.intersection(unique_b.index)
    relabelled = 0
    if shared_heads and len(common):
        left = unique_a.loc[common, shared_heads].fillna("")
        right = unique_b.loc[common, shared_heads].fillna("")
        relabelled = int((left != right).any(axis=1).sum())
    heads = {}
    for head in dict.fromkeys([*a.manifest.heads, *b.manifest.heads]):
        before = a.manifest.heads[head].counts if head in a.manifest.heads else {}
        after = b.manifest.heads[head].counts if head in b.manifest.heads else {}
        heads[head] = {c: (before.get(c, 0), after.get(c, 0)) for c in sorted(set(before) | set(after))}
    return {"a": a.manifest.name, "b": b.manifest.name, "rows": (a.manifest.rows, b.manifest.rows),
            "added": sum((inputs_b - inputs_a).values()), "removed": sum((inputs_a - inputs_b).values()),
            "relabelled": relabelled, "heads": heads}
