"""Snapshots: immutable, content-hashed Parquet + manifest.json exports of labelled data, the only thing training reads."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from headsmith.errors import SnapshotError
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

    def frame(self) -> pd.DataFrame:
        """The rows: `row` (line in the source file), `input`, and one label column per head (None = unlabelled)."""
        return pd.read_parquet(self.path / DATA_FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_csv(path: Path) -> pd.DataFrame:
    """Every cell as a string, empty cells as ''; errors name the file and what to do."""
    if not path.is_file():
        raise SnapshotError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise SnapshotError(f"{path}: the file is empty; it needs a header row and at least one data row") from None
    except UnicodeDecodeError as e:
        raise SnapshotError(f"{path}: not UTF-8 (byte {e.start}); re-save the file as UTF-8") from None
    except (pd.errors.ParserError, csv.Error) as e:
        raise SnapshotError(f"{path}: cannot parse as CSV: {e}") from None


def _check_columns(path: Path, table: pd.DataFrame, input_column: str, labels: dict[str, str]) -> None:
    available = ", ".join(table.columns)
    problems = []
    if input_column not in table.columns:
        problems.append(f"input column '{input_column}' is not in {path.name} (columns: {available})")
    for head, column in labels.items():
        if column not in table.columns:
            problems.append(f"label column '{column}' for head '{head}' is not in {path.name} (columns: {available}); "
                            f"pass --label {head}=COLUMN with one of them")
    if problems:
        raise SnapshotError("\n".join(problems))


def create_snapshot(
    workspace: Workspace,
    csv_path: Path | str,
    *,
    name: str,
    input_column: str,
    labels: dict[str, str],
    type: str = "text-classification",
    max_invalid: float = 0.05,
) -> Snapshot:
    """Validate a CSV and freeze it into an immutable snapshot; written atomically, never half."""
    csv_path = Path(csv_path)
    if type != "text-classification":
        raise SnapshotError(f"--type {type}: only text-classification snapshots can be created from a CSV so far")
    if not labels:
        raise SnapshotError("no heads: pass at least one --label HEAD=COLUMN")
    _check_name(name)
    table = read_csv(csv_path)
    if table.empty:
        raise SnapshotError(f"{csv_path}: has a header but no data rows")
    _check_columns(csv_path, table, input_column, labels)

    rows = pd.DataFrame({"row": range(2, len(table) + 2)})  # line numbers in the file, header is line 1
    rows["input"] = table[input_column].to_numpy()
    for head, column in labels.items():
        stripped = table[column].str.strip()
        rows[head] = stripped.where(stripped != "", None)

    reasons = pd.Series("", index=rows.index)
    reasons[rows["input"].str.strip() == ""] = f"empty {input_column}"
    unlabelled = rows[list(labels)].isna().all(axis=1) & (reasons == "")
    reasons[unlabelled] = "no label for any head"
    invalid = reasons != ""
    invalid_rows = [{"row": int(r), "reason": why} for r, why in zip(rows["row"][invalid], reasons[invalid])]
    share = len(invalid_rows) / len(rows)
    if share > max_invalid:
        listing = "\n".join(f"  {csv_path.name}:{r['row']}: {r['reason']}" for r in invalid_rows[:10])
        more = f"\n  ... and {len(invalid_rows) - 10} more" if len(invalid_rows) > 10 else ""
        raise SnapshotError(f"{csv_path}: {len(invalid_rows)} of {len(rows)} rows ({share:.1%}) are invalid, above the "
                            f"invalid data criterion of {max_invalid:.1%}:\n{listing}{more}\n"
                            "Fix those rows, or raise --max-invalid to drop them.")
    rows = rows[~invalid].reset_index(drop=True)

    heads = {}
    for head, column in labels.items():
        counts = rows[head].value_counts()
        if len(counts) < 2:
            only = f"only the class '{counts.index[0]}'" if len(counts) else "no labels"
            raise SnapshotError(f"head '{head}' (column '{column}' of {csv_path.name}) has {only}; a head needs at least "
                                "two mutually exclusive classes")
        classes = sorted(counts.index)
        heads[head] = HeadLabels(column=column, classes=classes, counts={c: int(counts[c]) for c in classes})

    return _write(workspace, rows, name=name, type=type, input_column=input_column, heads=heads,
                  invalid_rows=invalid_rows, source={"file": str(csv_path.resolve()), "sha256": _sha256(csv_path)})


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise SnapshotError(f"snapshot name '{name}' is not allowed: use letters, digits, '-', '_' and '.', "
                            "not starting with '.' and without '/'")


def _write(workspace: Workspace, rows: pd.DataFrame, **fields) -> Snapshot:
    workspace.snapshots_dir.mkdir(parents=True, exist_ok=True)
    with workspace.catalog() as db:
        if db.execute("SELECT 1 FROM snapshots WHERE name = ?", (fields["name"],)).fetchone():
            raise SnapshotError(f"a snapshot named '{fields['name']}' already exists; snapshots never change, "
                                "so pick another name")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=workspace.snapshots_dir))
    try:
        rows.to_parquet(staging / DATA_FILE, index=False)
        sha = _sha256(staging / DATA_FILE)
        manifest = SnapshotManifest(id=sha[:12], sha256=sha, rows=len(rows),
                                    created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        final = workspace.snapshots_dir / manifest.id
        if final.exists():
            raise SnapshotError(f"the same rows and labels are already snapshot {manifest.id}; use that one")
        for f in (DATA_FILE, MANIFEST_FILE):
            os.chmod(staging / f, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        # The catalog row commits only if the rename succeeded; a crash before it leaves only a staging folder.
        with workspace.catalog() as db:
            db.execute("INSERT INTO snapshots (id, name, sha256, type, rows, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (manifest.id, manifest.name, sha, manifest.type, manifest.rows, manifest.created_at))
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Snapshot(manifest, final)


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
    actual = _sha256(path / DATA_FILE)
    if actual != manifest.sha256:
        raise SnapshotError(f"snapshot '{manifest.name}' ({path / DATA_FILE}) does not match its sha256: expected "
                            f"{manifest.sha256}, found {actual}. It was changed after it was created; create it again.")
    return Snapshot(manifest, path)
