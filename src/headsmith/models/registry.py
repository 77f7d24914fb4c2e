"""The model registry: named, versioned copies of model packages in the workspace."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from headsmith.data.dataset import check_name
from headsmith.errors import HeadsmithError
from headsmith.files import publish_folder
from headsmith.models.package import META_FILE, read_meta
from headsmith.workspace import Workspace


def _package_of(source: Path) -> Path:
    """A run folder holds its package in model/; a package folder is taken as it is."""
    for candidate in (source, source / "model"):
        if (candidate / META_FILE).is_file():
            return candidate
    raise HeadsmithError(f"{source}: neither a model package nor a run folder with one (no {META_FILE} in it or in "
                         "its model/ folder)")


def register_model(workspace: Workspace, source: Path | str, name: str, force: bool = False) -> tuple[str, int]:
    """Copy a run's model package (the selection rule's best checkpoint) into the registry as NAME's next version."""
    check_name(name, "model")
    package = _package_of(Path(source).resolve())
    gate = read_meta(package)["lineage"].get("regression_gate")
    if gate and not gate["passed"] and not force:
        raise HeadsmithError(f"{package} failed its regression gate, so it is not registered:\n  "
                             + "\n  ".join(gate["failures"]) + "\n(--force registers it anyway)")
    workspace.models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=workspace.models_dir))
    try:
        shutil.copytree(package, staging / "package")
        with workspace.catalog() as db:
            db.execute("BEGIN IMMEDIATE")  # registrations take turns: two at once get the next two versions
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?",
                                 (name,)).fetchone()[0]
            final = workspace.models_dir / name / f"v{version}"
            final.parent.mkdir(parents=True, exist_ok=True)
            db.execute("INSERT INTO models (name, version, path, source, created_at) VALUES (?, ?, ?, ?, ?)",
                       (name, version, str(final), str(package),
                        datetime.now(timezone.utc).isoformat(timespec="seconds")))
            publish_folder(staging / "package", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name, version


def resolve_model(workspace: Workspace, ref: str) -> Path:
    """A model package folder (or run folder), or a registered NAME[:VERSION] (the latest version by default)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return _package_of(path.resolve())
    return resolve_registered(workspace, ref, nor="nor a folder ")


def resolve_registered(workspace: Workspace, ref: str, nor: str = "") -> Path:
    """A registered NAME[:VERSION] only, never a folder (what the web app deploys and trains from)."""
    name, _, version = ref.partition(":")
    with workspace.catalog() as db:
        if version:
            if not (version.isdigit() and len(version) <= 9):
                raise HeadsmithError(f"model '{ref}': the version after ':' is a number, e.g. {name}:2")
            row = db.execute("SELECT path FROM models WHERE name = ? AND version = ?", (name, int(version))).fetchone()
        else:
            row = db.execute("SELECT path FROM models WHERE name = ? ORDER BY version DESC LIMIT 1",
                             (name,)).fetchone()
        known = sorted({r["name"] for r in db.execute("SELECT name FROM models")})
    if row is None:
        hint = f"registered: {', '.join(known)}" if known else "none registered: headsmith model register RUN --name NAME"
        raise HeadsmithError(f"no model '{ref}': not a registered model {nor}({hint})")
    return Path(row["path"])


def model_identity(workspace: Workspace, ref: str) -> tuple[Path, str, int | None]:
    """The package a reference names, with its registered name and version (a folder outside the registry: its
    run folder as RUN_NAME/TIME, and no version)."""
    path = resolve_model(workspace, ref)
    with workspace.catalog() as db:
        row = db.execute("SELECT name, version FROM models WHERE path = ?", (str(path),)).fetchone()
    if row:
        return path, row["name"], row["version"]
    run = path.parent if path.name == "model" else path
    return path, f"{run.parent.name}/{run.name}", None


def list_models(workspace: Workspace) -> list[dict]:
    with workspace.catalog() as db:
        rows = [dict(r) for r in db.execute("SELECT * FROM models ORDER BY name, version")]
    for row in rows:
        meta = read_meta(row["path"])
        row["heads"] = {h: v["classes"] for h, v in meta["heads"].items()}
        row["backbone"] = meta["backbone"]["pretrained"]
    return rows
