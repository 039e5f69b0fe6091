"""Faults that used to break a store (issue 20): a full disk while compress or extract writes
(HDF5 and Zarr), damaged Zarr metadata, invalid status values, targets older than their
embeddings, a locked or truncated HDF5 file. Every case ends in one line naming the store and
what to do, and the store stays usable: nothing finished before is lost, and the same command
finishes once the cause is gone. Tiny real stores (15 rendered clips, crepe-tiny, 4-item
chunks, PCA targets; tests/fixtures_tiny.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fixtures_tiny import KEY, SUFFIX, TARGETS, run
from test_integrity import (
    EXTRACT_ARGS,
    _cli,
    _mount,
    all_arrays,
    assert_one_line_error,
    assert_same_store,
)

from eastkd.errors import EastkdError
from eastkd.store import open_store
from eastkd.store.backends import hdf5_backend

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
            with open_store(str(path)) as s:  # the finished sections: unchanged
                for k, v in before.items():
                    assert np.array_equal(s.backend.read(k, allow_missing=True), v), k
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
            if len(writes) == 1:  # the first block of values
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
    for i, size in enumerate(range(60, 240, 60)):
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


# -- 2. damaged Zarr metadata ----------------------------------------------------------------


def _damage_metadata(store: Path, how: str) -> str:
    """Damage one zarr.json the way a bad copy or an editor would; returns the node named."""
    group = store / "embeddings" / KEY / "zarr.json"
    if how == "invalid-json":
        group.write_text('{"zarr_format": 3, "node_type": "gro')
        return f"embeddings/{KEY}/zarr.json"
    if how == "unexpected-key":
        meta = json.loads(group.read_text())
        meta["bogus"] = 1
        group.write_text(json.dumps(meta))
        return f"embeddings/{KEY}/zarr.json"
    node = {"array-deleted": "clip", "status-deleted": "status", "array-emptied": "clip"}[how]
    meta = store / "embeddings" / KEY / node / "zarr.json"
    meta.unlink() if how.endswith("deleted") else meta.write_text("")
    return f"embeddings/{KEY}/{node}/zarr.json"


METADATA_DAMAGE = ("invalid-json", "unexpected-key", "array-deleted", "status-deleted",
                   "array-emptied")


@pytest.mark.parametrize("how", METADATA_DAMAGE)
def test_damaged_zarr_metadata_is_one_line_everywhere_then_repaired(
        store: Path, built: Path, tiny_manifest: Path, tmp_path: Path, how: str) -> None:
    if not store.is_dir():
        pytest.skip("Zarr only: HDF5 keeps its metadata inside the file")
    node = _damage_metadata(store, how)
    repairable = "/" in node.removeprefix(f"embeddings/{KEY}/")
    extract = ("extract", tiny_manifest, store, *EXTRACT_ARGS)
    for cmd in (("info", store), ("compress", store, *FRESH),
                ("distill", store, "--targets", KEY, "--out", tmp_path / "run", "--epochs", "1",
                 "--width", "4", "--no-progress", "--device", "cpu"), extract):
        assert_one_line_error(*run(*cmd), f"{store}: {node} is ")
    code, out = run("verify", store, "--no-progress")
    assert code == 1 and "ok:" not in out, out
    if not repairable:  # a group's attributes hold provenance: restore a copy
        assert "cannot be repaired in place" in out, out
        return
    assert f"DAMAGED  {node.removesuffix('/zarr.json')}: zarr.json" in out, out
    code, out = run("verify", store, "--repair", "--no-progress")
    assert code == 1 and "15 rows marked pending" in out, out
    code, out = run(*extract)
    assert code == 0 and "15 written" in out, out
    assert run("compress", store, "--name", TARGETS, "--dim", "4", "--no-progress",
               "--plot", tmp_path / "p.png")[0] == 0
    code, out = run("verify", store, "--no-progress")
    assert code == 0, out
    assert_same_store(store, built)


def test_a_full_disk_between_a_sections_arrays_leaves_it_unfinished(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills after the first of a new section's bookkeeping arrays (status, error) is
    created and before the second, a point the tmpfs sweep above reaches only when metadata
    sizes happen to line up: one line, the section unfinished rather than damaged (verify finds
    nothing), and the same compress then finishes it."""
    from eastkd.pipeline.compress.run import compress
    from eastkd.store.verify import verify

    with open_store(str(store)) as s:
        backend_class = type(s.backend)
    real = backend_class.create_array
    created: list[str] = []

    def disk_full_at_the_second(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path.startswith("targets/pca3/") and path.rsplit("/", 1)[1] in ("status", "error"):
            created.append(path)
            if len(created) == 2:
                with self.writing(path, need=0):
                    raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(backend_class, "create_array", disk_full_at_the_second)
    with pytest.raises(EastkdError, match="disk full"):
        compress(str(store), KEY, "pca", 3, "pca3", plot=False, progress=False)
    monkeypatch.undo()
    assert len(created) == 2
    assert not verify(str(store)).damaged
    compress(str(store), KEY, "pca", 3, "pca3", plot=False, progress=False)
    with open_store(str(store)) as s:
        assert s.targets("pca3").complete
    assert not verify(str(store)).damaged


def test_an_array_a_concurrent_shard_creates_is_not_taken_for_an_orphan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shards create the same array: ours finds no metadata, the other shard then writes
    the array's zarr.json and chunks, and ours lists them. Not an orphan (was: "zarr.json is
    damaged ()" from a two-shard extract); chunks whose zarr.json is really gone still are."""
    from eastkd.store.backends.zarr_backend import ZarrBackend

    path = str(tmp_path / "s.zarr")
    ZarrBackend.create(path).create_group("embeddings/k")
    ours, theirs = ZarrBackend(path, "a"), ZarrBackend(path, "a")
    listed = ours._listed

    def listed_after_the_other_shard_created_it(node: str) -> list[str]:
        theirs.create_array(node, (8,), (4,), "uint8", data=np.ones(8, np.uint8))
        return listed(node)

    monkeypatch.setattr(ours, "_listed", listed_after_the_other_shard_created_it)
    assert not ours.orphaned("embeddings/k/error")
    monkeypatch.undo()
    (tmp_path / "s.zarr" / "embeddings" / "k" / "error" / "zarr.json").unlink()
    assert ours.orphaned("embeddings/k/error")


# -- 3. invalid status values and stale targets ----------------------------------------------


def _write_status(store: Path, rows: list[int], value: int) -> None:
    with open_store(str(store), "r+") as s:
        path = f"embeddings/{KEY}/status"
        status = s.backend.read(path)
        status[rows] = value
        s.backend.write(path, slice(None), status)
        s.backend.flush()


def test_invalid_status_is_refused_then_stale_targets_are_refused(
        store: Path, built: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    _write_status(store, [1, 2, 5, 9], 7)
    distill_raw = ("distill", store, "--targets", KEY, "--out", tmp_path / "run", "--epochs",
                   "1", "--width", "4", "--no-progress", "--device", "cpu")
    for cmd in (("compress", store, *FRESH), distill_raw):
        assert_one_line_error(*run(*cmd), f"embeddings/{KEY}/status holds 4 invalid values",
                              f"eastkd verify {store} --repair")
    code, out = run("verify", store, "--repair", "--no-progress")
    assert code == 1 and "4 rows marked pending" in out, out
    assert run("extract", tiny_manifest, store, *EXTRACT_ARGS)[0] == 0
    # the targets were fitted before the rows were recomputed: refused, with the refit command
    distill = ("distill", store, "--targets", TARGETS, "--out", tmp_path / "run2", "--epochs",
               "1", "--width", "4", "--no-progress", "--device", "cpu")
    line = assert_one_line_error(*run(*distill), f"targets/{TARGETS} were fitted on",
                                 "changed since", "--overwrite")
    refit = line.split("refit them: ")[1]
    code, out = run("verify", store, "--no-progress")
    assert code == 1 and "changed since" in out, out
    assert run(*refit.split()[1:], "--no-progress", "--plot", tmp_path / "p.png")[0] == 0
    assert run(*distill)[0] == 0
    assert run("verify", store, "--no-progress")[0] == 0
    assert_same_store(store, built)


def test_targets_of_unchanged_embeddings_are_reused(store: Path, tmp_path: Path) -> None:
    """The write generation changes only when done rows are reset: a rerun of compress on
    untouched embeddings reuses its targets."""
    code, out = run("compress", store, "--name", TARGETS, "--dim", "4", "--no-progress",
                    "--plot", tmp_path / "p.png")
    assert code == 0 and "reused" in out, out


# -- 4. a locked or truncated HDF5 file ------------------------------------------------------


def test_hdf5_second_writer_and_truncated_file_say_what_to_do(built: Path,
                                                              tmp_path: Path) -> None:
    if built.is_dir():
        pytest.skip("HDF5 only")
    import h5py

    path = _copy(built, tmp_path / built.name)
    with h5py.File(path, "a"):  # another process writing it (HDF5 locks across processes)
        code, out = _cli("compress", path, *FRESH, "--plot", tmp_path / "p.png")
    assert_one_line_error(code, out, "another process is writing this store",
                          "wait for it to finish", "--shard")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    assert_one_line_error(*run("info", path), "the file is cut short",
                          "copy it again from its source")
