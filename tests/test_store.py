"""The store API against both backends (Zarr v3 directory and HDF5), in the spirit of
zarr-python's ``StoreTests``: one test class, run once per backend, with write-then-read round
trips, failure injection for the write order and atomic creation, and a reader that has only the
plain ``zarr``/``h5py`` libraries (eastkd made unimportable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from eastkd.errors import StoreDamageError
from eastkd.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    OK,
    PENDING,
    SKIPPED,
    ArraySpec,
    EastkdError,
    ItemsTable,
    StoreMismatchError,
    StoreNotFoundError,
    chunk_items,
    create_store,
    open_for_dataset,
    open_store,
)
from eastkd.store.backends.hdf5_backend import HDF5Backend
from eastkd.store.backends.zarr_backend import ZarrBackend

N = 37  # not a power of two: last chunks are partial
D = 6
T = 3
CLASSES = ["bäss", "drums", "vocals"]
IDENTITY = {"teacher": "t", "weights_sha256": "ab" * 32, "dtype": "float32"}


def make_items(n: int = N, seed: int = 0) -> ItemsTable:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(CLASSES))) < 0.4).astype(np.uint8)
    labels[0] = [0, 1, 0]
    durations = rng.uniform(0.5, 3.0, n).astype(np.float32)
    durations[3] = np.nan  # unreadable header
    return ItemsTable(
        ids=[f"clip-{i:03d}" if i != 1 else "ünï/日本 id, with comma" for i in range(n)],
        paths=[f"/data/ä/{i}.wav" for i in range(n)],
        sha256=[("%064x" % (i * 7919)) if i != 2 else "missing" for i in range(n)],
        durations=durations,
        splits=[("train", "valid", "test")[i % 3] for i in range(n)],
        labels=labels,
        class_names=list(CLASSES),
        multi_label=True,
        extra={"fold": np.arange(n) % 5, "artist": np.asarray([f"a{i % 4}" for i in range(n)])},
    )


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def ext(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def path(tmp_path: Path, ext: str) -> str:
    return str(tmp_path / f"store{ext}")


def _section(store, name: str = "k", identity: dict | None = None, overwrite: bool = False,
             max_chunk_items: int | None = None):
    return store.require_section(
        "embeddings", name,
        {"clip": ArraySpec((D,), "float32"), "frames": ArraySpec((T, D), "float16")},
        attrs={"teacher": "t", "segment": {"seconds": 1.0, "crop": "start"}},
        identity=identity or dict(IDENTITY), overwrite=overwrite,
        max_chunk_items=max_chunk_items,
    )


def _fill(store, sec, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Write every row in blocks of the section's unit; rows 4 and 9 are skipped."""
    rng = np.random.default_rng(seed)
    clip = rng.standard_normal((N, D)).astype(np.float32)
    frames = rng.standard_normal((N, T, D)).astype(np.float16)
    for s in range(0, N, sec.unit):
        e = min(N, s + sec.unit)
        status = np.full(e - s, OK, np.uint8)
        errors = [""] * (e - s)
        for bad in (4, 9):
            if s <= bad < e:
                status[bad - s] = SKIPPED
                errors[bad - s] = f"not decodable audio (row {bad})"
        sec.write_block(s, {"clip": clip[s:e], "frames": frames[s:e]}, status, errors)
    return clip, frames


class TestBackend:
    """Run once per backend (``ext``): everything eastkd relies on from a store."""

    def test_items_table_round_trip(self, path: str, ext: str) -> None:
        items = make_items()
        create_store(path, items, {"name": "toy", "source": "/x.csv", "description": "d"}).close()
        with open_store(path) as s:
            assert s.backend_name == ("zarr" if ext == ".zarr" else "hdf5")
            assert s.read_only
            got = s.items
            assert got.ids == items.ids and got.paths == items.paths
            assert got.sha256 == items.sha256 and got.splits == items.splits
            np.testing.assert_array_equal(got.durations, items.durations)  # NaN included
            np.testing.assert_array_equal(got.labels, items.labels)
            assert got.labels.dtype == np.uint8
            np.testing.assert_array_equal(got.label, items.label)
            assert got.class_names == CLASSES and got.multi_label is True
            assert sorted(got.extra) == ["artist", "fold"]
            np.testing.assert_array_equal(got.extra["fold"], items.extra["fold"])
            assert [str(a) for a in got.extra["artist"]] == list(items.extra["artist"])
            assert got.fingerprint() == items.fingerprint() == s.dataset_fingerprint
            a = s.attrs
            assert a["format"] == FORMAT_NAME and a["format_version"] == FORMAT_VERSION
            assert a["dataset"]["name"] == "toy" and a["dataset"]["n_items"] == N
            assert got.split_counts() == {"train": 13, "valid": 12, "test": 12}
            np.testing.assert_array_equal(got.split_indices("valid"), np.arange(1, N, 3))

    def test_fingerprint_is_the_dataset_identity(self) -> None:
        a, b = make_items(), make_items()
        b.paths = [p.replace("/data", "/moved") for p in b.paths]  # moving files: same data
        b.durations = b.durations * 2
        assert a.fingerprint() == b.fingerprint()
        for change in ("labels", "sha256", "splits", "ids"):
            c = make_items()
            if change == "labels":
                c.labels[5] = 1 - c.labels[5]
            else:
                getattr(c, change)[5] = "other"
            assert c.fingerprint() != a.fingerprint(), change

    def test_reprs_are_short_and_list_no_ids(self, path: str) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        _fill(store, _section(store))
        store.close()
        with open_store(path) as s:
            sec = s.embeddings("k")
            texts = {"items": repr(s.items), "store": repr(s), "section": repr(sec),
                     "array": repr(sec.array("frames"))}
        for what, text in texts.items():
            assert "\n" not in text and len(text) < 300, (what, text)
            assert "clip-003" not in text and "/data/" not in text, (what, text)
        assert texts["items"] == ("<ItemsTable: 37 items, 3 classes (bäss, drums, vocals), "
                                  "multi-label; train 13, valid 12, test 12; columns artist, "
                                  "fold>")
        assert texts["store"].endswith("embeddings k>") and "37 items" in texts["store"]
        assert texts["section"].endswith(f"clip ({N}, {D}); frames ({N}, {T}, {D}); "
                                         "35 ok, 2 skipped, 0 pending>")
        assert "shape (37, 3, 6), float16" in texts["array"]
        many = make_items(5000)
        many.class_names = [f"class{i}" for i in range(50)]
        assert len(repr(many)) < 200 and "(50 in all)" in repr(many)

    def test_to_xarray_attaches_the_items(self, path: str) -> None:
        import warnings

        items = make_items()
        store = create_store(path, items, {"name": "toy"})
        clip, frames = _fill(store, _section(store))
        store.close()
        with open_store(path) as s, warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = s.to_xarray("embeddings/k")
            assert ds["clip"].dims == ("item", "dim") and ds["frames"].dims[0] == "item"
            assert list(ds["item"].values) == items.ids
            assert list(ds["split"].values) == items.splits
            np.testing.assert_array_equal(ds["labels"].values, items.labels)
            assert list(ds["class"].values) == CLASSES
            np.testing.assert_array_equal(ds["fold"].values, items.extra["fold"])
            np.testing.assert_array_equal(ds["clip"].sel(item="clip-005").values, clip[5])
            valid = ds["clip"].where(ds["split"] == "valid", drop=True)
            np.testing.assert_array_equal(valid.values, clip[1::3])
            assert ds.attrs["teacher"] == "t"
            with pytest.raises(EastkdError, match="expected KIND/NAME"):
                s.to_xarray("k")

    def test_sections_status_errors_and_counts(self, path: str) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        sec = _section(store)
        assert sec.counts() == {"ok": 0, "skipped": 0, "pending": N} and not sec.complete
        with pytest.raises(EastkdError, match=f"{N} of {N} items pending"):
            sec.require_complete()
        clip, frames = _fill(store, sec)
        store.close()
        with open_store(path) as s:
            sec = s.embeddings("k")
            assert sorted(sec.array_names()) == ["clip", "frames"]
            assert sec.counts() == {"ok": N - 2, "skipped": 2, "pending": 0} and sec.complete
            sec.require_complete()
            np.testing.assert_array_equal(sec.array("clip")[:], clip)
            np.testing.assert_array_equal(sec.array("frames")[:], frames)
            assert sec.array("clip").dtype == np.float32
            assert sec.array("frames").dtype == np.float16
            assert sec.array("frames").shape == (N, T, D)
            st = sec.status()
            assert st.dtype == np.uint8 and set(np.flatnonzero(st == SKIPPED)) == {4, 9}
            err = sec.errors()
            assert err[4] == "not decodable audio (row 4)" and err[0] == ""
            assert sec.skipped() == [("clip-004", "not decodable audio (row 4)"),
                                     ("clip-009", "not decodable audio (row 9)")]
            assert sec.attrs["segment"] == {"seconds": 1.0, "crop": "start"}
            assert sec.attrs["identity"] == IDENTITY
            assert s.section_names("embeddings") == ["k"]
            with pytest.raises(EastkdError, match="no embedding 'other'.*have: k"):
                s.embeddings("other")
            with pytest.raises(EastkdError, match="no array 'nope'"):
                sec.array("nope")
            with pytest.raises(EastkdError, match="read-only"):
                _section(s)

    @pytest.mark.parametrize("fail_on", ["frames", "status"])
    def test_write_block_writes_data_before_status(self, path: str, ext: str, fail_on: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """A writer dying anywhere before the status write leaves the block pending; the data
        of a block is on disk before its status says so."""
        store = create_store(path, make_items(), {"name": "toy"})
        sec = _section(store)
        order: list[str] = []
        cls = ZarrBackend if ext == ".zarr" else HDF5Backend
        real_write, real_flush = cls.write, cls.flush

        def write(self, p, sel, value):
            order.append(p.split("/", 2)[2])  # the path within the section
            if p.endswith("/" + fail_on):
                raise OSError("disk full (injected)")
            return real_write(self, p, sel, value)

        def flush(self):
            order.append("flush")
            return real_flush(self)

        monkeypatch.setattr(cls, "write", write)
        monkeypatch.setattr(cls, "flush", flush)
        block = np.ones((4, D), np.float32)
        with pytest.raises(OSError, match="injected"):
            sec.write_block(0, {"clip": block, "frames": np.ones((4, T, D), np.float16)},
                            np.full(4, OK, np.uint8), [""] * 4)
        monkeypatch.undo()
        if fail_on == "status":
            # each data chunk's content digest right after it, all before the status
            assert order == ["clip", "digest/clip", "frames", "digest/frames", "error", "flush",
                             "status"]
        else:
            assert order[-1] == fail_on and "status" not in order
        store.close()
        with open_store(path) as s:
            sec = s.embeddings("k")
            assert (sec.status() == PENDING).all()
            # data written before the failure is there, but nothing claims it is done
            np.testing.assert_array_equal(sec.array("clip")[:4], block)

    def test_identity_refusal_and_overwrite(self, path: str) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        clip, _ = _fill(store, _section(store))
        # same identity: reopened as is, data kept
        sec = _section(store)
        np.testing.assert_array_equal(sec.array("clip")[:], clip)
        other = {**IDENTITY, "weights_sha256": "cd" * 32, "dtype": "float16"}
        with pytest.raises(StoreMismatchError,
                           match=r"embeddings/k was written with other settings \(differs in: "
                                 r"dtype, weights_sha256\); use another name or --overwrite"):
            _section(store, identity=other)
        np.testing.assert_array_equal(store.embeddings("k").array("clip")[:], clip)
        sec = _section(store, identity=other, overwrite=True)
        assert sec.attrs["identity"] == other
        assert sec.counts()["pending"] == N
        # pending rows are never read as data: they hold the NaN fill value, which readers
        # refuse as unfinished work (not as damage: there is nothing to repair)
        with pytest.raises(EastkdError, match=r"clip items 0-36: not computed yet") as e:
            sec.array("clip")[:]
        assert not isinstance(e.value, StoreDamageError)
        assert np.isnan(store.backend.read(f"{sec.path}/clip", allow_missing=True)).all()
        store.delete_section("embeddings", "k")
        assert not store.has_section("embeddings", "k")
        store.close()

    def test_fill_rows_are_damage_only_where_status_says_done(self, path: str) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        sec = _section(store, max_chunk_items=8)
        assert sec.unit == 8
        clip = np.ones((16, D), np.float32)
        frames = np.ones((16, T, D), np.float16)
        status = np.full(16, OK, np.uint8)
        status[4] = SKIPPED  # skipped rows are written (zeros), never left as fill
        sec.write_block(0, {"clip": clip[:8] * 0, "frames": frames[:8] * 0}, status[:8])
        sec.write_block(8, {"clip": clip[8:], "frames": frames[8:]}, status[8:])
        np.testing.assert_array_equal(sec.array("clip")[:16], np.r_[clip[:8] * 0, clip[8:]])
        with pytest.raises(EastkdError, match=r"clip items 16-36: not computed yet \(status "
                                              r"pending\)") as e:
            sec.array("clip")[10:]
        assert not isinstance(e.value, StoreDamageError)
        # a chunk of done rows that is lost reads as fill too: that is damage
        store.backend.reset_chunk(f"{sec.path}/clip", 1)
        store.close()
        with open_store(path) as s:
            lost = s.embeddings("k").array("clip")
            with pytest.raises(StoreDamageError, match=r"clip items 8-15: chunk missing or "):
                lost[10:]
            with pytest.raises(StoreDamageError, match=r"clip items 8-15: chunk missing or "):
                lost.read_rows(np.asarray([30, 9]))

    def test_params_round_trip(self, path: str) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        sec = _section(store)
        rng = np.random.default_rng(3)
        params = {"components": rng.standard_normal((4, D)), "mean": rng.random(D).astype(
            np.float32), "whiten": np.asarray(True)}
        store.write_params(sec, params)
        store.write_params(sec, {"mean": params["mean"] * 2})  # rewriting replaces
        store.close()
        with open_store(path) as s:
            got = s.read_params(s.embeddings("k"))
            assert sorted(got) == ["components", "mean", "whiten"]
            np.testing.assert_array_equal(got["components"], params["components"])
            assert got["components"].dtype == np.float64
            np.testing.assert_array_equal(got["mean"], params["mean"] * 2)
            assert got["whiten"].shape == (1,) and bool(got["whiten"][0])
            # params are not item-aligned arrays of the section
            assert sorted(s.embeddings("k").array_names()) == ["clip", "frames"]

    def test_read_rows_order_and_one_read_per_chunk(self, path: str, ext: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        clip, frames = _fill(store, _section(store, max_chunk_items=8))
        arr = store.embeddings("k").array("clip")
        rows = np.array([30, 2, 3, 4, 31, 2, 10, 11, 12, 0, 36])
        reads: list[object] = []
        cls = type(store.backend)
        real = cls.read
        monkeypatch.setattr(cls, "read", lambda self, p, sel=slice(None): (
            reads.append(sel), real(self, p, sel))[1])
        got = arr.read_rows(rows)
        np.testing.assert_array_equal(got, clip[rows])
        # chunks of 8: rows 0-4 | 10-12 | 30-31 | 36 -> four reads, not one per row
        assert reads == [slice(0, 5), slice(10, 13), slice(30, 32), slice(36, 37)]
        monkeypatch.undo()
        assert arr.read_rows(np.array([], dtype=int)).shape == (0, D)
        np.testing.assert_array_equal(store.embeddings("k").array("frames").read_rows(rows),
                                      frames[rows])
        store.close()

    def test_iter_blocks_alignment(self, path: str) -> None:
        store = create_store(path, make_items(), {"name": "toy"})
        clip, _ = _fill(store, _section(store, max_chunk_items=8))
        arr = store.embeddings("k").array("clip")
        assert arr.chunks == (8, D) and len(arr) == N
        blocks = list(arr.iter_blocks())
        assert [(a, b) for a, b, _ in blocks] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]
        np.testing.assert_array_equal(np.concatenate([x for _, _, x in blocks]), clip)
        assert [(a, b) for a, b, _ in arr.iter_blocks(16)] == [(0, 16), (16, 32), (32, 37)]
        np.testing.assert_array_equal(arr.to_dask().compute(), clip)
        store.close()

    def test_chunks_of_realistic_sections(self, tmp_path: Path, ext: str) -> None:
        """Arrays of a big dataset get 1-8 MB chunks; the unit covers whole chunks of all."""
        n = 25_000
        store = create_store(str(tmp_path / f"big{ext}"), make_items(n), {"name": "big"})
        sec = store.require_section(
            "embeddings", "crepe", {"clip": ArraySpec((2048,), "float16"),
                                    "frames": ArraySpec((201, 2048), "float16")},
            attrs={}, identity={"t": 1})
        feat = store.require_section(
            "features", "logmel", {"values": ArraySpec((96, 1451), "float16")}, attrs={},
            identity={"t": 1})
        for s in (sec, feat):
            for a in s.array_names():
                c = s.array(a).chunks
                nbytes = int(np.prod(c)) * s.array(a).dtype.itemsize
                assert 1 << 20 <= nbytes <= 8 << 20, (a, c, nbytes)
                assert c[1:] == s.array(a).shape[1:]
                assert s.unit % c[0] == 0
        assert sec.unit == 1024 and sec.array("frames").chunks[0] == 4
        assert feat.unit == 8
        assert store.embeddings("crepe").array("clip").chunks == (1024, 2048)
        capped = store.require_section("targets", "pca", {"values": ArraySpec((128,), "float32")},
                                       attrs={}, identity={}, max_chunk_items=64)
        assert capped.array("values").chunks == (64, 128) and capped.unit == 64
        store.close()

    def test_atomic_create(self, path: str, ext: str, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
        """A failure (or Ctrl-C) while the items table is written leaves nothing behind."""
        cls = ZarrBackend if ext == ".zarr" else HDF5Backend
        real = cls.create_array
        for exc in (OSError("No space left on device (injected)"), KeyboardInterrupt()):
            def create_array(self, p, *a, exc=exc, **kw):
                if p == "items/labels":
                    raise exc
                return real(self, p, *a, **kw)

            monkeypatch.setattr(cls, "create_array", create_array)
            with pytest.raises(type(exc)):
                create_store(path, make_items(), {"name": "toy"})
            assert not os.path.exists(path)
            assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no .partial left over
        monkeypatch.undo()
        create_store(path, make_items(), {"name": "toy"}).close()
        assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]
        with pytest.raises(EastkdError, match="already exists"):
            create_store(path, make_items(), {"name": "toy"})

    def test_open_for_another_dataset_is_refused(self, path: str) -> None:
        create_store(path, make_items(), {"name": "toy"}).close()
        open_for_dataset(path, make_items()).close()
        with pytest.raises(StoreMismatchError, match=r"written for another dataset \(toy, 37 "
                                                     r"items.*choose another store path"):
            open_for_dataset(path, make_items(seed=1))

    def test_non_store_paths(self, tmp_path: Path, ext: str) -> None:
        with pytest.raises(StoreNotFoundError, match="no such store"):
            open_store(str(tmp_path / f"missing{ext}"))
        if ext == ".zarr":
            folder = tmp_path / "music"
            folder.mkdir()
            (folder / "song.wav").write_bytes(b"RIFF")
            for mode in ("r", "r+"):
                with pytest.raises(StoreNotFoundError, match="not an eastkd store"):
                    open_store(str(folder), mode)
            assert os.listdir(folder) == ["song.wav"]  # nothing written into the user's folder
            import zarr

            zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
            with pytest.raises(StoreNotFoundError, match="no 'eastkd-store' format attribute"):
                open_store(str(tmp_path / "plain.zarr"))
        else:
            text = tmp_path / "notes.h5"
            text.write_text("not hdf5")
            with pytest.raises(EastkdError, match="cannot open as HDF5"):
                open_store(str(text), "r+")
            assert text.read_text() == "not hdf5"
            import h5py

            h5py.File(tmp_path / "plain.h5", "w").close()
            with pytest.raises(StoreNotFoundError, match="no 'eastkd-store' format attribute"):
                open_store(str(tmp_path / "plain.h5"))

    def test_newer_format_is_refused(self, path: str) -> None:
        with create_store(path, make_items(), {"name": "toy"}) as s:
            s.backend.update_attrs("", {"format_version": FORMAT_VERSION + 1})
        with pytest.raises(EastkdError, match="newer than this eastkd understands"):
            open_store(path)

    def test_plain_library_reads_without_eastkd(self, path: str, ext: str) -> None:
        items = make_items()
        store = create_store(path, items, {"name": "toy"})
        clip, frames = _fill(store, _section(store))
        store.close()
        script = textwrap.dedent(f"""
            import json, sys
            class NoEastkd:
                def find_spec(self, name, path=None, target=None):
                    if name == "eastkd" or name.startswith("eastkd."):
                        raise ImportError("eastkd is blocked in this reader")
            sys.meta_path.insert(0, NoEastkd())
            try:
                import eastkd.store
                raise SystemExit("eastkd was importable")
            except ImportError:
                pass
            path, ext = {path!r}, {ext!r}
            if ext == ".zarr":
                import zarr
                g = zarr.open_group(path, mode="r")
                ids = [str(x) for x in g["items/id"][:]]
                labels = g["items/labels"][:].tolist()
                clip = g["embeddings/k/clip"][:].tolist()
                frames = g["embeddings/k/frames"][:].astype(float).tolist()
                status = g["embeddings/k/status"][:].tolist()
                error = [str(x) for x in g["embeddings/k/error"][:]]
                root, sec = dict(g.attrs), dict(g["embeddings/k"].attrs)
                classes = g["items"].attrs["class_names"]
            else:
                import h5py
                with h5py.File(path, "r") as f:
                    ids = list(f["items/id"].asstr()[:])
                    labels = f["items/labels"][:].tolist()
                    clip = f["embeddings/k/clip"][:].tolist()
                    frames = f["embeddings/k/frames"][:].astype(float).tolist()
                    status = f["embeddings/k/status"][:].tolist()
                    error = list(f["embeddings/k/error"].asstr()[:])
                    dec = lambda v: json.loads(v[5:]) if isinstance(v, str) and v.startswith(
                        "json:") else (v.item() if hasattr(v, "item") else v)
                    root = {{k: dec(v) for k, v in f.attrs.items()}}
                    sec = {{k: dec(v) for k, v in f["embeddings/k"].attrs.items()}}
                    classes = dec(f["items"].attrs["class_names"])
            assert "eastkd" not in sys.modules
            print(json.dumps(dict(ids=ids, labels=labels, clip=clip, frames=frames,
                                  status=status, error=error, root=root, sec=sec,
                                  classes=classes)))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": ""})
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["ids"] == items.ids and got["classes"] == CLASSES
        np.testing.assert_array_equal(got["labels"], items.labels)
        np.testing.assert_array_equal(np.asarray(got["clip"], np.float32), clip)
        np.testing.assert_array_equal(np.asarray(got["frames"], np.float16), frames)
        assert got["status"].count(SKIPPED) == 2 and got["error"][9].startswith("not decodable")
        assert got["root"]["format"] == "eastkd-store"
        assert got["root"]["dataset"]["fingerprint"] == items.fingerprint()
        assert got["sec"]["identity"] == IDENTITY and got["sec"]["teacher"] == "t"


def test_chunk_items_targets_1_to_8_mb() -> None:
    realistic_rows = {
        "crepe clip 2048 fp16": 2048 * 2,
        "crepe-tiny clip 256 fp16": 256 * 2,
        "passt clip 768 fp32": 768 * 4,
        "mule clip 1728 fp32": 1728 * 4,
        "logmel 96x51 fp16 (1 s)": 96 * 51 * 2,
        "logmel 96x1451 fp32 (29 s)": 96 * 1451 * 4,
        "crepe frames 201x2048 fp16 (10 s)": 201 * 2048 * 2,
    }
    for what, row in realistic_rows.items():
        k = chunk_items(row, 1_000_000)
        assert k & (k - 1) == 0, what
        assert 1 << 20 <= k * row <= 8 << 20, (what, k, k * row)
    assert chunk_items(512, 80) == 128  # never much more than the dataset
    assert chunk_items(512, 1) == 1
    assert chunk_items(1, 10**7) == 8192  # tiny rows: capped item count
    assert chunk_items(50 << 20, 100) == 1  # a row bigger than the target: one per chunk
    assert chunk_items(512, 10**6, max_items=16) == 16  # a cap only makes chunks smaller
    assert chunk_items(96 * 1451 * 4, 10**6, max_items=4096) == chunk_items(96 * 1451 * 4, 10**6)
    with pytest.raises(EastkdError, match="power of two"):
        chunk_items(512, 100, max_items=12)
