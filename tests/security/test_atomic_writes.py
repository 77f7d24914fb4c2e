"""Every file headsmith writes is whole or absent: one helper writes beside the target, fsyncs, renames, and fsyncs
the folder; blobs are on disk before the catalog says `ok`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import headsmith
from headsmith.files import atomic_path, write_atomic
from headsmith.data.media import BlobStore


def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_atomic(target, '{"f1": 0.5}')
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"f1": 0.')  # half written, then the process fails
            raise RuntimeError("crash")
    assert target.read_text() == '{"f1": 0.5}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left behind
    write_atomic(target, b'{"f1": 0.75}')
    assert target.read_text() == '{"f1": 0.75}'
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as an ordinary file, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_blob_is_fsynced_with_its_folder_before_put_returns(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.fstat(fd).st_ino)
        real(fd)
    monkeypatch.setattr(os, "fsync", record)
    store = BlobStore(tmp_path / "blobs")
    path = store.path(store.put(b"\x89PNG image bytes"))
    assert path.stat().st_ino in synced and path.parent.stat().st_ino in synced


def test_the_write_then_rename_pattern_lives_in_one_helper():
    """Anything else that renames a temporary file over a target is a second copy of files.py."""
    source = Path(headsmith.__file__).parent
    copies = [f"{path.relative_to(source)}:{n}" for path in source.rglob("*.py") if path.name != "files.py"
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"os\.replace\(|mkstemp\(|tmp\w*\.replace\(|\.tmp\b", line)]
    assert copies == []
