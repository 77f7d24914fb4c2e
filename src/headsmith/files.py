"""Writes a crash cannot leave half done: a file, or a folder of files, is either the old one or the new one.

The new bytes go to a temporary name beside the target, are fsynced, renamed over the target (atomic on POSIX),
and the folder is fsynced so that the rename itself survives a power cut."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def map_file(path: Path | str) -> mmap.mmap:
    """A file memory-mapped read-only (see give_back)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def give_back(mapped: mmap.mmap) -> None:
    """Drop the pages a mapping's reads brought in from this process (they stay in the page cache): reading a big
    file bit by bit over time then leaves the process no larger."""
    if hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS
        mapped.madvise(mmap.MADV_DONTNEED)


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


def _sync_tree(folder: Path) -> None:
    """A folder's files and entries on disk, itself last."""
    for item in [*folder.rglob("*"), folder]:
        if not item.is_symlink():
            fsync_path(item)


def publish_folder(staging: Path, final: Path) -> None:
    """Rename a fully written staging folder into place, its files and entries on disk first."""
    _sync_tree(staging)
    os.rename(staging, final)
    fsync_path(final.parent)


def _aside(final: Path) -> Path:
    return final.with_name(f".{final.name}.previous")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE); False where that is not available."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:  # not Linux, or a C library before glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the filesystem or kernel cannot
        return False
    raise OSError(error, os.strerror(error), str(b))


def replace_folder(staging: Path, final: Path) -> None:
    """Put a fully written staging folder in place of `final`, which may exist; at every moment `final` is the old
    folder or the new one. On Linux the two are swapped in one step and the old one is deleted. Elsewhere the old
    folder is renamed aside first (`.NAME.previous`): a crash before the new one is renamed in leaves no `final`,
    and `recover_folder`, which every reader calls, puts the old one back."""
    recover_folder(final)
    if not final.exists():
        return publish_folder(staging, final)
    _sync_tree(staging)
    if _exchange(staging, final):
        fsync_path(final.parent)
        shutil.rmtree(staging)  # now the old folder
        return
    aside = _aside(final)
    os.rename(final, aside)
    os.rename(staging, final)
    fsync_path(final.parent)
    shutil.rmtree(aside)


def recover_folder(final: Path) -> None:
    """Undo a `replace_folder` that crashed between its two renames: the old folder back at `final`."""
    aside = _aside(Path(final))
    if aside.is_dir() and not Path(final).exists():
        os.rename(aside, final)
