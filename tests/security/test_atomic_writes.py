"""Every file headsmith writes is whole or absent: one helper writes beside the target, fsyncs, renames, and fsyncs
the folder; blobs are on disk before the catalog says `ok`."""

from __future__ import annotations

import os
import re
import threading
import time
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


@pytest.fixture
def package(compose, reviews_snapshot, tmp_path) -> Path:
    from headsmith.training.train import train

    train(compose("dataset.snapshot=reviews", f"paths.output_dir={tmp_path / 'run'}", "trainer.max_epochs=1"))
    return tmp_path / "run" / "model"


def _generation(folder: Path) -> int:
    """Which save wrote the package a reader loads: its model.json says, and its weights must agree."""
    from headsmith.models.package import load_model

    net = load_model(folder)
    assert float(net.heads["head_sentiment"][1].bias[0]) == net.meta["lineage"]["generation"]
    return net.meta["lineage"]["generation"]


def _save(net, folder: Path, generation: int) -> None:
    import torch

    from headsmith.models.package import save_package

    with torch.no_grad():
        net.heads["head_sentiment"][1].bias[0] = generation
    save_package(net, folder, {"generation": generation})


def test_a_package_replaced_again_and_again_always_loads_as_the_old_or_the_new(package):
    """A resumed run writes its package over the one its first part wrote, while a deployment or eval may read it."""
    from headsmith.models.package import load_model

    net = load_model(package)
    _save(net, package, 0)
    seen, failures, done = set(), [], threading.Event()

    def read():
        while not done.is_set():
            try:
                seen.add(_generation(package))
            except Exception as e:  # noqa: BLE001 - every failure is the test's to report
                failures.append(repr(e))
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(1, 31):
            _save(net, package, generation)
            time.sleep(0.05)
    finally:
        done.set()
        reader.join()
    assert failures == [] and len(seen) > 1
    assert _generation(package) == 30
    assert sorted(p.name for p in package.parent.iterdir() if p.name.startswith(".")) == []  # nothing left aside


def test_a_crash_between_moving_the_old_package_aside_and_the_new_one_in_is_recovered_on_load(package, monkeypatch):
    """Where folders cannot be swapped in one step (not Linux, or a filesystem without renameat2's exchange), the old
    package is moved aside first; a crash before the new one is renamed in leaves no package at its path."""
    from headsmith import files
    from headsmith.models.package import load_model

    net = load_model(package)
    _save(net, package, 1)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("the process dies here")
        real_rename(src, dst)
    monkeypatch.setattr(os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _save(net, package, 2)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not package.exists()  # the crash came in between
    assert load_model(package).heads["head_sentiment"][1].bias[0] == 1  # the old package, put back
    assert _generation(package) == 1
