"""Writes a crash cannot leave half done: a file, or a folder of files, is either the old one or the new one.

The new bytes go to a temporary name beside the target, are fsynced, renamed over the target (atomic on POSIX),
and the folder is fsynced so that the rename itself survives a power cut."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path | str) -> None:
    """Flush a file's bytes, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` to write to. When the block ends it becomes `path`; when it raises, `path` is
    left as it was and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path | str, data: str | bytes) -> Path:
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)


def publish_folder(staging: Path, final: Path) -> None:
    """Rename a fully written staging folder into place, its files and entries on disk first."""
    for item in [*staging.rglob("*"), staging]:
        if not item.is_symlink():
            fsync_path(item)
    os.rename(staging, final)
    fsync_path(final.parent)
