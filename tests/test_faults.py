"""Faults that used to break a store (issue 20): a full disk while compress or extract writes
(HDF5 and Zarr), damaged Zarr metadata, invalid status values, targets older than their
embeddings, a locked or truncated HDF5 file. Every case ends in one line naming the store and
what to do, and the store stays usable: nothing finished before is lost, and the same command
finishes once the cause is gone. Tiny real stores (15 rendered clips, crepe-tiny, 4-item
chunks, PCA targets; the fixtures of test_integrity)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eastkd.store import open_store
from eastkd.store.backends import hdf5_backend
from test_integrity import (  # noqa: F401 - fixtures
    EXTRACT_ARGS,
    KEY,
    SUFFIX,
    TARGETS,
    _cli,
    _mount,
    all_arrays,
    assert_one_line_error,
    assert_same_store,
    built,
    run,
    store,
    tiny_manifest,
)

FRESH = ("--name", "pca3", "--dim", "3", "--no-progress")


def _copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def _fingerprint(path: Path) -> str:
    """The store's bytes (HDF5) or every file's name and bytes (Zarr)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _size_kb(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    # tmpfs allocates whole pages per file
    return sum(-(-f.stat().st_size // 4096) * 4 for f in files)


def _distill_raw(store: Path, out: Path) -> tuple[int, str]:
    return run("distill", store, "--targets", KEY, "--out", out, "--epochs", "1", "--width",
               "4", "--no-progress", "--device", "cpu")


# -- 1. a full disk while compress writes ----------------------------------------------------


def _compress_into_small_disks(built: Path, tmp_path: Path, extra_kb: range) -> list[str]:
    """``compress`` of new targets into a copy of ``built`` on a tmpfs ``extra_kb`` larger than
    the store, for each size: a failure is one line and leaves the store as it was (HDF5:
    byte-identical; Zarr: finished sections unchanged, the new one pending), verify tells the
    truth, the raw embeddings stay trainable, and the same command finishes once space is
    freed, giving what compress gives on a roomy disk. Returns what each failure named."""
    reference = _copy(built, tmp_path / f"ref-{built.name}")
    assert run("compress", reference, *FRESH, "--plot", tmp_path / "ref.png")[0] == 0
    before = all_arrays(built)
    failures: list[str] = []
    for i, extra in enumerate(extra_kb):
        disk = tmp_path / f"disk{i}"
        with _mount(disk, "-t", "tmpfs", "-o", f"size={_size_kb(built) + extra}k"):
            path = _copy(built, disk / built.name)
            sha = _fingerprint(path)
            code, out = run("compress", path, *FRESH, "--plot", tmp_path / "p.png")
            if code == 0:
                assert_same_store(path, reference)
                return failures
            line = assert_one_line_error(code, out, str(path), "disk full",
                                         "free space then rerun the same command")
            failures.append(line.split("while writing ")[1].split(";")[0])
            assert not hdf5_backend.has_abandoned_files()
            assert [p.name for p in disk.iterdir()] == [path.name]  # no working copy left
            if path.is_file():
                assert _fingerprint(path) == sha
            after = all_arrays(path)
            assert all(np.array_equal(after[k], v) for k, v in before.items())
            code, out = run("verify", path, "--no-progress")
            assert code == 0 and "DAMAGED" not in out, out
            if i == 0:
                assert _distill_raw(path, tmp_path / "run")[0] == 0
            subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
            code, out = run("compress", path, *FRESH, "--plot", tmp_path / "p.png")
            assert code == 0, out
            assert_same_store(path, reference)
    raise AssertionError(f"compress never finished: {failures}")


def test_full_disk_during_compress_keeps_the_store(built: Path, tmp_path: Path) -> None:
    """Disks from nearly full to roomy: HDF5 fails first on the working copy, then inside it
    (the targets' arrays), never in the store; Zarr writes in place, chunk by chunk."""
    step = 24 if built.is_file() else 8
    failures = _compress_into_small_disks(built, tmp_path, range(8, 1000, step))
    assert failures, "no size made compress fail"
    if built.is_file():
        assert any("working copy" in f for f in failures), failures
        assert any(f.startswith("targets/pca3") for f in failures), failures


def test_hdf5_failed_write_inside_the_working_copy_leaves_the_store(
        built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the free-space check (another process fills the disk meanwhile), HDF5 itself
    fails in the middle of the new targets: the working copy is dropped unflushed and removed,
    and the store is byte-identical. Injected at the write call, so no mount is needed."""
    if built.is_dir():
        pytest.skip("HDF5 only")
    path = _copy(built, tmp_path / built.name)
    sha = _fingerprint(path)
    monkeypatch.setattr(hdf5_backend, "free_bytes", lambda p: None)
    real = hdf5_backend.HDF5Backend.write
    writes: list[str] = []

    def full_disk(self, array, selection, value):  # noqa: ANN001
        if array == "targets/pca3/values":
            writes.append(array)
            if len(writes) == 2:
                with self.writing(array, need=0):
                    raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, array, selection, value)

    monkeypatch.setattr(hdf5_backend.HDF5Backend, "write", full_disk)
    code, out = run("compress", path, *FRESH, "--plot", tmp_path / "p.png")
    assert_one_line_error(code, out, "disk full while writing targets/pca3/values")
    assert not hdf5_backend.has_abandoned_files()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".h5") == [path.name]
    assert _fingerprint(path) == sha
    monkeypatch.setattr(hdf5_backend.HDF5Backend, "write", real)
    assert run("compress", path, *FRESH, "--plot", tmp_path / "p.png")[0] == 0
    assert run("verify", path, "--no-progress")[0] == 0


# -- 1. a full disk while extract writes -----------------------------------------------------


def test_full_disk_during_extract_at_any_point(built: Path, tiny_manifest: Path,
                                               tmp_path: Path) -> None:
    """Disks too small for the store, from nearly nothing up: each extract stops with the
    disk-full line, and the same command finishes the store once space is freed."""
    for i, size in enumerate(range(60, 240, 40)):
        disk = tmp_path / f"disk{i}"
        with _mount(disk, "-t", "tmpfs", "-o", f"size={size}k"):
            path = disk / f"s.{SUFFIX['hdf5' if built.is_file() else 'zarr']}"
            code, out = run("extract", tiny_manifest, path, *EXTRACT_ARGS)
            assert_one_line_error(code, out, "disk full", "free space then rerun the same command")
            assert not hdf5_backend.has_abandoned_files()
            subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
            code, out = run("extract", tiny_manifest, path, *EXTRACT_ARGS)
            assert code == 0, out
            code, out = run("verify", path, "--no-progress")
            assert code == 0, out
            ours, theirs = all_arrays(path), all_arrays(built)
            for k, v in ours.items():
                assert np.array_equal(v, theirs[k]), k
