"""Damage after writing: every case ends in a clear one-line error or, through
``eastkd verify --repair`` and a rerun, in a store equal to the original (never in exit 0 with
wrong data). Tiny real stores (15 rendered clips, crepe-tiny, 4-item chunks, PCA targets), both
backends; damage is done to the bytes on disk the way a bad copy or disk would."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from fixtures_tiny import KEY, SUFFIX, TARGETS, compress_tiny, extract_tiny, run

from eastkd.errors import StoreDamageError
from eastkd.store import FORMAT_VERSION, open_store
from eastkd.store.backends.hdf5_backend import has_abandoned_files

# array kind -> (array path, item chunk to damage)
ARRAYS = {
    "features": ("features/logmel/values", 1),
    "embeddings": (f"embeddings/{KEY}/clip", 1),
    "frames": (f"embeddings/{KEY}/frames", 2),
    "targets": (f"targets/{TARGETS}/values", 0),
    "status": (f"embeddings/{KEY}/status", 0),
    "items": ("items/duration", 0),
    "ids": ("items/id", 0),  # Zarr only: HDF5 strings live outside chunks (see below)
}
DAMAGES = ("delete", "flip", "truncate", "random")
EXTRACT_ARGS = ("--teacher", "crepe-tiny", "--teacher-opt", "hop_ms=100", "--chunk-items", "4",
                "--frames", "-j", "0", "--no-progress")


def assert_one_line_error(code: int, out: str, *needles: str) -> str:
    assert code != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def all_arrays(path: Path) -> dict[str, np.ndarray]:
    with open_store(str(path)) as s:
        out = {}
        for kind in ("features", "embeddings", "targets"):
            for name in s.section_names(kind):
                if not s.has_section(kind, name):  # created, never given a status
                    continue
                sec = s.section(kind, name)
                for a in sec.array_names() + ["status", "error"]:
                    out[f"{sec.path}/{a}"] = s.backend.read(f"{sec.path}/{a}",
                                                            allow_missing=True)
                for p, v in s.read_params(sec).items():
                    out[f"{sec.path}/params/{p}"] = v
        return out


def assert_same_store(a: Path, b: Path) -> None:
    x, y = all_arrays(a), all_arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        assert np.array_equal(x[k], y[k]), k


# -- damaging bytes on disk ------------------------------------------------------------------


def _zarr_chunk_file(store: Path, array: str, index: int) -> Path:
    ndim = len(json.loads((store / array / "zarr.json").read_text())["shape"])
    return store / array / "c" / str(index) / Path(*["0"] * (ndim - 1)) if ndim > 1 else \
        store / array / "c" / str(index)


def _hdf5_chunk_range(store: Path, array: str, index: int) -> tuple[int, int]:
    import h5py

    with h5py.File(store, "r") as f:
        ds = f[array]
        info = ds.id.get_chunk_info_by_coord((index * ds.chunks[0],) + (0,) * (ds.ndim - 1))
        return info.byte_offset, info.size


def _change(path: Path, offset: int, size: int, how: str) -> None:
    data = bytearray(path.read_bytes())
    chunk = data[offset:offset + size]
    if how == "flip":
        chunk[len(chunk) // 2] ^= 0xFF
    elif how == "random":
        chunk[:] = np.random.default_rng(0).integers(0, 256, len(chunk), dtype=np.uint8).tobytes()
    elif how == "delete":  # HDF5 has no chunk files: the chunk's bytes are zeroed
        chunk[:] = bytes(len(chunk))
    data[offset:offset + size] = chunk
    path.write_bytes(bytes(data))


def damage(store: Path, array: str, index: int, how: str) -> None:
    if store.is_dir():
        f = _zarr_chunk_file(store, array, index)
        assert f.exists(), f
        if how == "delete":
            f.unlink()
        elif how == "truncate":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            _change(f, 0, f.stat().st_size, how)
        return
    offset, size = _hdf5_chunk_range(store, array, index)
    if how == "truncate":  # a copy cut short inside this chunk
        os.truncate(store, offset + size // 2)
    else:
        _change(store, offset, size, how)


# -- the damage matrix -----------------------------------------------------------------------


def _consumer(store: Path, kind: str, tmp: Path) -> tuple[str, ...]:
    """A command that reads the damaged array the way a user would."""
    if kind in ("embeddings", "status"):
        return ("compress", store, "--name", "fresh", "--dim", "3", "--no-progress")
    if kind == "frames":
        return ("distill", store, "--targets", KEY, "--frame-targets", "--out", tmp / "run",
                "--epochs", "1", "--width", "4", "--no-progress", "--device", "cpu")
    if kind in ("features", "targets"):
        return ("distill", store, "--targets", TARGETS, "--out", tmp / "run", "--epochs", "1",
                "--width", "4", "--no-progress", "--device", "cpu")
    return ("info", store)  # items, ids


def _rerun_restores(store: Path, kind: str, how: str) -> bool:
    """Whether this case also reruns extract/compress after the repair (the slow part): once
    per failure route and array kind (checksum: flip), and for an absent chunk (Zarr)."""
    return how == "flip" or (how == "delete" and store.is_dir() and kind == "embeddings")


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(ARRAYS))
def test_damage_is_caught_and_repaired(store: Path, built: Path, tiny_manifest: Path,
                                       tmp_path: Path, kind: str, how: str) -> None:
    array, index = ARRAYS[kind]
    if kind == "ids" and not store.is_dir():
        pytest.skip("HDF5 string chunks hold heap references: test_hdf5_edited_id_is_caught")
    damage(store, array, index, how)
    status_gone = kind == "status" and how == "delete" and store.is_dir()
    truncated_file = not store.is_dir() and how == "truncate"

    # 1. the command that reads it stops with one line naming the store
    code, out = run(*_consumer(store, kind, tmp_path))
    # an absent status chunk reads as pending: the rows are unfinished, not wrong
    assert_one_line_error(code, out, "unfinished" if status_gone else str(store))
    if kind in ("items", "ids"):  # compress reads the items table too
        assert_one_line_error(*run("compress", store, "--name", "x", "--dim", "3",
                                   "--no-progress"), str(store))

    # 2. verify names the array; repair marks the rows pending (unless it cannot)
    code, out = run("verify", store, "--no-progress")
    if truncated_file:  # the file cannot even be opened: nothing to repair in place
        assert_one_line_error(code, out, "cannot open")
        return
    if kind in ("items", "ids"):
        assert code == 1 and "cannot be repaired in place" in out, out
        code, out = run("verify", store, "--repair", "--no-progress")
        assert code == 1 and "rows marked pending" not in out, out
        return
    if not status_gone:
        assert code == 1 and f"DAMAGED  {array}" in out, out
        code, out = run("verify", store, "--repair", "--no-progress")
        assert code == 1 and "rows marked pending" in out, out
        assert run("verify", store, "--no-progress")[0] == 0  # only pending rows are left

    # 3. the same commands recompute exactly those rows: the store equals the original
    if _rerun_restores(store, kind, how) or status_gone:
        extract_tiny(tiny_manifest, store)
        compress_tiny(store)
        code, out = run("verify", store, "--no-progress")
        assert code == 0 and "pending" not in out, out
        assert_same_store(store, built)


def test_damaged_chunk_read_names_store_array_and_rows(store: Path) -> None:
    damage(store, "embeddings/crepe-tiny/clip", 2, "flip")
    with open_store(str(store)) as s:
        clip = s.embeddings(KEY).array("clip")
        clip.read_rows(np.arange(0, 8))  # chunks 0 and 1 are intact
        with pytest.raises(StoreDamageError) as e:
            clip.read_rows(np.asarray([1, 9, 14]))
    msg = str(e.value)
    assert msg.startswith(f"{store}: embeddings/crepe-tiny/clip items 8-11: chunk damaged")
    assert f"eastkd verify {store} --repair" in msg and "\n" not in msg


def test_hdf5_edited_id_is_caught(built: Path, tmp_path: Path) -> None:
    if built.is_dir():
        pytest.skip("HDF5 only: its strings carry no chunk checksum")
    store = tmp_path / built.name
    shutil.copy(built, store)
    data = bytearray(store.read_bytes())
    at = data.find(b"piano_0001")
    assert at > 0
    data[at] = ord("P")
    store.write_bytes(bytes(data))
    assert_one_line_error(*run("info", store), "items table damaged (checksum mismatch)")
    code, out = run("verify", store, "--json", "--no-progress")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert any("checksum mismatch" in f["problem"] for f in report["findings"])


def test_verify_json_on_a_sound_store(built: Path) -> None:
    code, out = run("verify", built, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["findings"] == []
    assert report["items"] == 15 and report["format_version"] == FORMAT_VERSION
    with open_store(str(built)) as s:
        n_arrays = sum(1 for _ in _walk_arrays(s))
    assert report["arrays"] == n_arrays and report["bytes_decoded"] > 0


def _walk_arrays(s, base: str = "") -> Iterator[str]:  # noqa: ANN001
    for c in s.backend.children(base):
        p = f"{base}/{c}" if base else c
        if s.backend.is_array(p):
            yield p
        else:
            yield from _walk_arrays(s, p)


# -- the format: dimension names, checksums ---------------------------------------------------


def test_every_group_opens_in_xarray(built: Path) -> None:
    if not built.is_dir():
        pytest.skip("xarray.open_zarr: Zarr only")
    import xarray as xr
    import zarr

    root = zarr.open_group(str(built), mode="r")
    groups = [p for p, node in root.members(max_depth=None) if isinstance(node, zarr.Group)]
    opened = {}
    for g in groups:
        ds = xr.open_zarr(str(built), group=g, consolidated=False)
        opened[g] = ds
    emb = opened[f"embeddings/{KEY}"]
    assert dict(emb.sizes) == {"item": 15, "dim": 256, "frame": emb.sizes["frame"]}
    assert emb["clip"].dims == ("item", "dim")
    assert emb["frames"].dims == ("item", "frame", "dim")
    assert opened["features/logmel"]["values"].dims == ("item", "mel", "frame")
    assert opened["items"]["labels"].dims == ("item", "class")
    assert opened[f"targets/{TARGETS}"]["values"].dims == ("item", "dim")
    with open_store(str(built)) as s:
        np.testing.assert_array_equal(emb["clip"].values, s.embeddings(KEY).array("clip")[:])
        assert list(opened["items"]["id"].values) == s.items.ids


def test_to_xarray_gives_ids_labels_and_splits(built: Path) -> None:
    import warnings

    with open_store(str(built)) as s, warnings.catch_warnings():
        warnings.simplefilter("error")  # no consolidated-metadata warning, nor any other
        ds = s.to_xarray(f"targets/{TARGETS}")
        items = s.items
        assert list(ds["item"].values) == items.ids
        assert list(ds["label"].values) == [items.class_names[i] for i in items.label]
        assert list(ds["split"].values) == items.splits
        test = ds["values"].where(ds["split"] == "test", drop=True)
        np.testing.assert_array_equal(
            test.values, s.targets(TARGETS).array("values")[:][items.split_indices("test")])


def test_every_chunk_is_checksummed(built: Path) -> None:
    with open_store(str(built)) as s:
        for p in _walk_arrays(s):
            if s.backend.info(p).dtype.kind != "O":
                assert s.backend.info(p).checksummed, p


# -- read-only stores and full disks ---------------------------------------------------------


def _snapshot(path: Path) -> dict[str, object]:
    """Zarr: every file's mtime and size (nothing may be rewritten); HDF5: the file's bytes
    (HDF5 may touch the mtime of a file opened for writing even when it writes nothing)."""
    if path.is_file():
        return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in path.rglob("*") if p.is_file()}


def test_nothing_to_do_writes_nothing(store: Path, tiny_manifest: Path) -> None:
    """Root ignores permissions, so this checks what a read-only store needs directly: a run
    with nothing to do leaves every file (and the file list) untouched."""
    before = _snapshot(store)
    extract_tiny(tiny_manifest, store)
    compress_tiny(store)
    assert run("verify", store, "--repair", "--no-progress")[0] == 0
    assert _snapshot(store) == before


@contextlib.contextmanager
def _mount(target: Path, *options: str, source: str = "tmpfs") -> Iterator[None]:
    """A real mount (tmpfs of a given size, or a read-only bind); skips where not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", *options, source, str(target)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("needs root and mount (not available here)")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_read_only_mount(store: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    with _mount(ro, "--bind", "-o", "ro", source=str(store.parent)):
        path = ro / store.name
        extract_tiny(tiny_manifest, path)  # nothing to do: works on a read-only store
        assert run("info", path)[0] == 0
        damage_free = run("verify", path, "--repair", "--no-progress")
        assert damage_free[0] == 0, damage_free[1]
        assert_one_line_error(*run("compress", path, "--name", "other", "--dim", "3",
                                   "--no-progress", "--plot", tmp_path / "p.png"),
                              "read-only file system")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_disk_full_keeps_finished_rows(tiny_manifest: Path, tmp_path: Path, backend: str,
                                       built: Path) -> None:
    if SUFFIX[backend] != built.suffix.lstrip("."):
        pytest.skip("one backend per built store")
    small = tmp_path / "small"
    size = {"zarr": "240k", "hdf5": "200k"}[backend]  # room for a few blocks, not all
    with _mount(small, "-t", "tmpfs", "-o", f"size={size}"):
        path = small / f"s.{SUFFIX[backend]}"
        code, out = run("extract", tiny_manifest, path, *EXTRACT_ARGS)
        assert_one_line_error(code, out, "disk full", "free space then rerun the same command")
        # HDF5: the handle was closed without flushing into the full disk, none is left over
        # (garbage-collecting one crashed h5py in a later test)
        assert not has_abandoned_files()
        gc.collect()
        with open_store(str(path)) as s:  # what status says is done is really there
            done = s.embeddings(KEY).status() == 1
            assert 0 < done.sum() < 15
            clip = s.embeddings(KEY).array("clip").read_rows(np.flatnonzero(done))
        with open_store(str(built)) as s:
            np.testing.assert_array_equal(
                clip, s.embeddings(KEY).array("clip").read_rows(np.flatnonzero(done)))
        subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
        # the file left by the full disk is whole: the same command finishes it
        code, out = run("extract", tiny_manifest, path, *EXTRACT_ARGS)
        assert code == 0, out
        compress_tiny(path)
        assert_same_store(path, built)


def _chunk_beyond_the_end(built: Path, store: Path, manifest: Path) -> np.ndarray:
    """An HDF5 store whose rows 12-14 are pending, with an index naming their clip chunk
    beyond the file's recorded end, as a process leaves it that ended after a dataset flush
    but before the file flush (a full disk did so before every write flushed the whole file):
    every later read or write of that chunk fails in HDF5 ("addr overflow"). Returns the rows'
    clip values, which a rerun writes again (a chunk of the same size, so in the same place)."""
    extract_tiny(manifest, store, units=[0, 1, 2])  # rows 12-14 (unit 3) pending
    with open_store(str(built)) as s:
        rows = s.embeddings(KEY).array("clip")[12:15]
    script = f"""if True:
        import os, h5py, numpy as np
        f = h5py.File({str(store)!r}, "a")
        ds = f["embeddings/{KEY}/clip"]
        ds[12:15] = np.asarray({rows.tolist()!r}, ds.dtype)  # a new chunk, at the file's end
        ds.flush()  # its index entry is written, the file's end-of-allocation is not
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", script], check=True)
    return rows


def test_hdf5_chunk_beyond_the_files_end_is_one_line_then_repaired(
        built: Path, tmp_path: Path, tiny_manifest: Path) -> None:
    if built.is_dir():
        pytest.skip("HDF5 only")
    store = tmp_path / built.name
    _chunk_beyond_the_end(built, store, tiny_manifest)
    # every command in a subprocess, as a user runs them
    code, out = _extract_cli(tiny_manifest, store)
    assert_one_line_error(code, out, f"{store}: embeddings/{KEY}/clip items 12-14: chunk damaged",
                          f"eastkd verify {store} --repair")
    code, out = _cli("verify", store, "--repair", "--no-progress")
    assert code == 1 and f"DAMAGED  embeddings/{KEY}/clip items 12-14" in out, out
    assert "rows marked pending" in out, out
    code, out = _extract_cli(tiny_manifest, store)
    assert code == 0, out
    assert run("verify", store, "--no-progress")[0] == 0
    compress_tiny(store)
    assert_same_store(store, built)


def test_hdf5_fletcher32_is_hdf5s_own_and_agrees_with_numcodecs() -> None:
    """verify checks HDF5 chunks with libhdf5's own fletcher32 (outside the GIL); it agrees
    with numcodecs' copy (the fallback) on even and odd lengths, and catches one flipped bit."""
    from numcodecs.fletcher32 import Fletcher32

    from eastkd.store.backends.hdf5_backend import _checksum_ok, _fletcher32

    assert _fletcher32() is not None  # found beside h5py
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 1001, 1 << 20):
        raw = bytes(Fletcher32().encode(rng.integers(0, 256, n, dtype=np.uint8)))
        assert _checksum_ok(raw) and _checksum_ok(bytearray(raw))
        bad = bytearray(raw)
        bad[n // 2] ^= 0x01
        assert not _checksum_ok(bad)


@pytest.mark.parametrize("fallback", ["hdf5-reads", "numcodecs"])
def test_hdf5_verify_fallbacks_find_the_same_damage(
        built: Path, tmp_path: Path, tiny_manifest: Path, fallback: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the superblock's end of allocation cannot be read, chunks are read through HDF5;
    where libhdf5's checksum cannot be found, numcodecs' is used: both still find a flipped
    chunk and a chunk beyond the file's end."""
    if built.is_dir():
        pytest.skip("HDF5 only")
    import eastkd.store.backends.hdf5_backend as hdf5_backend

    if fallback == "hdf5-reads":
        monkeypatch.setattr(hdf5_backend, "end_of_allocation", lambda path: None)
    else:
        monkeypatch.setattr(hdf5_backend, "_fletcher32", lambda: None)
    store = tmp_path / built.name
    _chunk_beyond_the_end(built, store, tiny_manifest)
    damage(store, "features/logmel/values", 1, "flip")
    code, out = run("verify", store, "--no-progress")
    assert code == 1, out
    assert f"DAMAGED  embeddings/{KEY}/clip items 12-14" in out, out
    assert "DAMAGED  features/logmel/values items 4-7: chunk damaged (checksum mismatch)" in out


def test_hdf5_unreadable_chunk_is_not_overwritten(built: Path, tmp_path: Path,
                                                  tiny_manifest: Path) -> None:
    """Overwriting a stored chunk HDF5 cannot read is refused before HDF5 takes the write: it
    would fail to flush it, on close too, and leave h5py objects that crash the process when
    garbage-collected (as a later test's did)."""
    if built.is_dir():
        pytest.skip("HDF5 only")
    store = tmp_path / built.name
    rows = _chunk_beyond_the_end(built, store, tiny_manifest)
    with open_store(str(store), "r+") as s:
        sec = s.embeddings(KEY)
        with pytest.raises(StoreDamageError, match=r"clip items 12-14: chunk damaged"):
            sec.write_rows(12, {"clip": rows})
        sec.write_rows(0, {"clip": s.embeddings(KEY).array("clip")[:4]})  # others still are
    assert not has_abandoned_files()
    gc.collect()
    code, out = run("verify", store, "--no-progress")
    assert code == 1 and f"DAMAGED  embeddings/{KEY}/clip items 12-14" in out, out


def _extract_cli(manifest: Path, store: Path) -> tuple[int, str]:
    return _cli("extract", manifest, store, *EXTRACT_ARGS)


def _cli(*args: str | Path) -> tuple[int, str]:
    """In a subprocess: HDF5 ends a process whose file could not be flushed itself."""
    cmd = [sys.executable, "-m", "eastkd.cli.main", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return res.returncode, res.stdout + res.stderr


# -- format version 1 ------------------------------------------------------------------------


def _downgrade_to_v1(path: Path) -> None:
    """Rewrite a Zarr store the way format 1 wrote it: default codecs (no checksum), fill
    value 0, no dimension names, no items checksum."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    arrays = [(p, a) for p, a in root.members(max_depth=None) if isinstance(a, zarr.Array)]
    for p, a in arrays:
        data, attrs = a[...], a.attrs.asdict()
        string = data.dtype.kind in "OT"
        del root[p]
        new = root.create_array(p, shape=a.shape, chunks=a.chunks,
                                dtype=str if string else data.dtype,
                                fill_value="" if string else 0, attributes=attrs)
        new[...] = data
    items = root["items"].attrs.asdict()
    items.pop("checksum")
    root["items"].attrs.put(items)
    root.attrs["format_version"] = 1


def test_version_1_store_is_read_verified_and_repaired(store: Path, built: Path,
                                                       tiny_manifest: Path) -> None:
    if not store.is_dir():
        pytest.skip("format 1 conversion: Zarr only")
    _downgrade_to_v1(store)
    assert run("info", store)[0] == 0
    code, out = run("verify", store, "--no-progress")
    assert code == 0 and "note  embeddings/crepe-tiny/clip: chunks carry no checksum" in out
    # without NaN fill, an absent chunk is found by listing the chunks against the status
    damage(store, "embeddings/crepe-tiny/clip", 1, "delete")
    code, out = run("verify", store, "--repair", "--no-progress")
    assert code == 1 and "DAMAGED  embeddings/crepe-tiny/clip items 4-7: chunk missing" in out
    extract_tiny(tiny_manifest, store)
    assert_same_store(store, built)


def test_update_items_keeps_the_table_trusted(store: Path) -> None:
    """An items table changed through the API (e.g. files re-hashed) gets a new checksum and
    fingerprint, with the old fingerprint kept as provenance; the store still verifies."""
    with open_store(str(store), "r+") as s:
        items = s.items
        old = s.dataset_fingerprint
        items.sha256[3] = "f" * 64
        s.update_items(items, "re-hashed after a repair")
    with open_store(str(store)) as s:
        assert s.items.sha256[3] == "f" * 64
        assert s.dataset_fingerprint == s.items.fingerprint() != old
        prev = s.attrs["dataset"]["previous_fingerprints"]
        assert prev[-1]["fingerprint"] == old and prev[-1]["reason"] == "re-hashed after a repair"
    assert run("verify", store, "--no-progress")[0] == 0


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_deep_verify_finds_the_same_damage(store: Path, how: str) -> None:
    """--deep decodes every chunk instead of checking raw bytes: same findings."""
    damage(store, "features/logmel/values", 2, how)
    fast = json.loads(run("verify", store, "--json")[1])
    deep = json.loads(run("verify", store, "--json", "--deep")[1])
    rows = [(f["path"], f["rows"]) for f in fast["findings"] if f["damage"]]
    assert rows == [(f["path"], f["rows"]) for f in deep["findings"] if f["damage"]]
    assert rows == [("features/logmel/values", [8, 12])]
    if store.is_dir():  # HDF5 has no raw check: it always decodes
        # data that records content digests (format 3) is decoded and hashed by both
        assert deep["bytes_decoded"] >= fast["bytes_decoded"] > 0


# -- manifests -------------------------------------------------------------------------------


def _manifest_rows(manifest: Path) -> tuple[str, list[str]]:
    lines = manifest.read_text().strip().splitlines()
    return lines[0], lines[1:]


@pytest.mark.parametrize("change, line", [
    (lambda row: row + ",oops", 3),  # a field beyond the header
    (lambda row: row.replace(",piano,", ",piano, grand,"), 3),  # unquoted comma in a label
    (lambda row: row.rsplit(",", 1)[0], 3),  # a field missing
])
def test_manifest_field_count_is_one_line_naming_it(tiny_manifest: Path, tmp_path: Path,
                                                     change, line: int) -> None:
    header, rows = _manifest_rows(tiny_manifest)
    rows[1] = change(rows[1])
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header, *rows]) + "\n")
    code, out = run("extract", bad, tmp_path / "s.zarr", "--no-progress")
    msg = assert_one_line_error(code, out, f"{bad}:{line}: ", "the header has 4")
    assert "unknown split" not in msg and 'double quotes, e.g. "brass, reed"' in msg
    assert not (tmp_path / "s.zarr").exists()


def test_dangling_link_and_folder_are_skipped_items(tiny_manifest: Path, tmp_path: Path) -> None:
    header, rows = _manifest_rows(tiny_manifest)
    cols = header.split(",")
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    broken = []
    for i, name in enumerate(["gone.wav", "folder.wav"]):
        row = rows[i].split(",")
        row[cols.index("path")] = str(tmp_path / name)
        broken.append(",".join(row))
    good = [",".join(r.split(",")[:1] + [str(tiny_manifest.parent / r.split(",")[1])]
                     + r.split(",")[2:]) for r in rows[2:4]]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([header, *broken, *good]) + "\n")
    store = tmp_path / "s.zarr"
    args = ("extract", manifest, store, *EXTRACT_ARGS)
    assert_one_line_error(*run(*args), "file not found", "--on-error skip")
    code, out = run(*args, "--on-error", "skip")
    assert code == 0, out
    with open_store(str(store)) as s:
        reasons = dict(s.embeddings(KEY).skipped())
    assert reasons == {rows[0].split(",")[0]: "file not found",
                       rows[1].split(",")[0]: "unreadable file (Is a directory)"}
