"""The read path (pipeline/core/reading.py) on real class-sorted stores (Zarr and HDF5): shuffling
close to a full shuffle, each chunk read once per epoch, streamed == in memory, bounded memory,
reader workers across fork and spawn, the learned compression streaming from the store."""

from __future__ import annotations

import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import KEY, make_synthetic_store

from eastkd.pipeline.compress.learned import LearnedCompressor
from eastkd.pipeline.core.reading import RowStream, load_split, resolve_targets, split_rows
from eastkd.pipeline.distill.train import distill
from eastkd.store import StoreArray, open_store

N_ITEMS, N_CLASSES, CHUNK = 1200, 10, 16  # 960 train rows: 60 chunks of 16, 96 per class
N_MELS = N_FRAMES = 16
DIM = 8
STORED_ROW_BYTES = (N_MELS * N_FRAMES + DIM) * 2  # float16 on disk


pytestmark = pytest.mark.usefixtures("one_thread")


def _make(path: Path) -> str:
    return make_synthetic_store(str(path), N_ITEMS, N_CLASSES, N_MELS, N_FRAMES, DIM, CHUNK)


@pytest.fixture(scope="module")
def zarr_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _make(tmp_path_factory.mktemp("reading") / "sorted.zarr")


@pytest.fixture(scope="module")
def h5_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _make(tmp_path_factory.mktemp("reading") / "sorted.h5")


def _distinct_classes(batches_labels: list[np.ndarray]) -> float:
    return float(np.mean([len(np.unique(y)) for y in batches_labels if len(y) == 16]))


def test_shuffle_buffer_is_close_to_a_full_shuffle_on_a_class_sorted_store(zarr_store):
    with open_store(zarr_store) as s:
        data = load_split(s, "train", resolve_targets(s, KEY), memory_limit=0,
                          shuffle_buffer=1 << 19, workers=0)
        labels = s.items.label[data.rows]
    assert not data.in_memory and data.stream.unit == CHUNK
    assert data.stream.window_units == 31  # 512 KiB per window of 16.5 KiB units
    gen = torch.Generator().manual_seed(0)
    streamed = [b.y.numpy() for _ in range(3) for b in data.batches(16, gen)]
    rng = np.random.default_rng(0)
    full = [labels[p] for _ in range(3) for p in np.split(rng.permutation(len(labels)), 60)]
    assert _distinct_classes(full) > 7.5  # 10 classes, 16 draws: about 8.1
    assert _distinct_classes(streamed) >= 0.9 * _distinct_classes(full)
    data.stream.window_units = 4  # the old scheme: 4 neighbouring-in-order chunks at a time
    narrow = [b.y.numpy() for _ in range(3) for b in data.batches(16, gen)]
    assert _distinct_classes(narrow) < 0.8 * _distinct_classes(full)


def test_streamed_epoch_reads_every_chunk_once_and_equals_memory(zarr_store):
    with open_store(zarr_store) as s:
        spec = resolve_targets(s, KEY)
        mem = load_split(s, "train", spec)
        stream = load_split(s, "train", spec, memory_limit=0, shuffle_buffer=1 << 18,
                            workers=0)
        assert mem.in_memory and not stream.in_memory and len(mem) == 960
        x_all = mem.stream.resident["x"]
        t_all = mem.stream.resident["t"]
        orders = []
        for seed in (0, 1):
            rows = []
            for b in stream.batches(16, torch.Generator().manual_seed(seed), drop_last_below=2):
                pos = np.searchsorted(mem.rows, b.rows)
                assert b.x.dtype == torch.float32 and len(b.y) == 16
                assert torch.equal(b.x, x_all[pos]) and torch.equal(b.t, t_all[pos])
                assert np.array_equal(b.y.numpy(), s.items.label[b.rows])
                rows.extend(b.rows.tolist())
            assert sorted(rows) == mem.rows.tolist()  # every row once per epoch
            assert stream.stream.last_read_bytes == 960 * STORED_ROW_BYTES  # each chunk once
            orders.append(rows)
        assert orders[0] != orders[1]
        for a, b in zip(mem.input_stats(), stream.input_stats()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        (ma, sa), (mb, sb) = mem.target_stats(), stream.target_stats()
        torch.testing.assert_close(ma, mb, rtol=1e-6, atol=1e-7)
        assert sa == pytest.approx(sb, rel=1e-9)


def test_streaming_memory_is_bounded_by_the_buffer_not_the_split(zarr_store):
    """Python-side allocations (numpy reads included) while streaming an epoch and computing
    the statistics stay far below the split's float32 size: no whole-array loads or copies."""
    with open_store(zarr_store) as s:
        data = load_split(s, "train", resolve_targets(s, KEY), memory_limit=0,
                          shuffle_buffer=1 << 15, workers=0)
        split_bytes = len(data) * (N_MELS * N_FRAMES + DIM) * 4
        assert data.stream.window_units == 1
        tracemalloc.start()
        try:
            data.input_stats()
            data.target_stats()
            for _ in data.batches(16, torch.Generator().manual_seed(0)):
                pass
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            load_split(s, "train", resolve_targets(s, KEY), workers=0)  # resident: the lot
            resident_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < split_bytes / 4, (peak, split_bytes)
    assert resident_peak >= split_bytes


@pytest.fixture(scope="module")
def zip_store(zarr_store: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The zarr store zipped, as shared between teams (read-only)."""
    dst = tmp_path_factory.mktemp("reading") / "sorted.zip"
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        for root, _dirs, files in os.walk(zarr_store):
            for f in files:
                full = Path(root) / f
                zf.write(full, full.relative_to(zarr_store).as_posix())
    return str(dst)


@pytest.mark.parametrize("backend,context", [("zarr", "fork"), ("hdf5", "fork"),
                                             ("hdf5", "spawn"), ("zip", "fork")])
def test_reader_workers_give_the_same_batches(zarr_store, h5_store, zip_store, backend,
                                              context):
    """Workers open the store themselves (the parent's handle is open before the fork) and the
    windows arrive in plan order: the same batches as without workers, epoch after epoch."""
    path = {"zarr": zarr_store, "hdf5": h5_store, "zip": zip_store}[backend]
    with open_store(path) as s:
        rows = split_rows(s, "train")
        arrays = {"x": s.features().array("values"), "t": s.embeddings(KEY).array("clip")}
        s.features().array("values")[:4]  # the parent reads before the workers start
        plain = RowStream(arrays, rows, memory_limit=0, shuffle_buffer=1 << 18, workers=0)
        multi = RowStream(arrays, rows, memory_limit=0, shuffle_buffer=1 << 18, workers=2,
                          context=context)
        g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        try:
            for _ in range(2):  # the second epoch reuses the persistent workers
                a = list(plain.batches(32, g0))
                b = list(multi.batches(32, g1))
                assert len(a) == len(b) == 30
                for p, q in zip(a, b):
                    assert all(torch.equal(p[k], q[k]) for k in ("pos", "x", "t"))
                assert multi.last_read_bytes == plain.last_read_bytes
        finally:
            multi.close()


def test_distill_streamed_with_workers_equals_in_memory_setup(zarr_store, tmp_path):
    """A streamed run with reader workers gives the same history as one without; the student
    learns the classes of the sorted store."""
    kw = dict(kd="fitnet", width=4, epochs=2, batch_size=32, patience=0, seed=1,
              progress=False, memory_limit=0, shuffle_buffer=1 << 20)
    a = distill(zarr_store, KEY, str(tmp_path / "w0"), workers=0, **kw)
    b = distill(zarr_store, KEY, str(tmp_path / "w2"), workers=2, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
    assert a.test_metrics["accuracy"] > 0.3  # 10 classes: chance 0.1


def test_learned_compression_streams_from_the_store(zarr_store, monkeypatch):
    """memory_limit 0: the learned map reads the split chunk by chunk every epoch (never the
    whole split at once) and learns as well as in memory."""
    with open_store(zarr_store) as s:
        src = s.embeddings(KEY).array("clip")
        items = s.items
        rows, vrows = items.split_indices("train"), items.split_indices("valid")
        mem = LearnedCompressor(4, epochs=30, patience=5).fit(src, rows, items, vrows)

        def no_whole_reads(self: StoreArray, rows: np.ndarray) -> np.ndarray:
            raise AssertionError("whole-split read")

        monkeypatch.setattr(StoreArray, "read_rows", no_whole_reads)
        streamed = LearnedCompressor(4, epochs=30, patience=5, memory_limit=0).fit(
            src, rows, items, vrows)
    np.testing.assert_allclose(streamed.mean_, mem.mean_, rtol=1e-6)
    np.testing.assert_allclose(streamed.std_, mem.std_, rtol=1e-6)
    score, mem_score = (c.summary()["probe_metric"]["value"] for c in (streamed, mem))
    assert score > 0.5 and mem_score > 0.5 and abs(score - mem_score) < 0.1  # chance 0.1


def test_frame_targets_stream_with_their_own_chunking(demo_store_master):
    """Frame-level targets (N x T x D) chunked differently from the inputs are streamed in the
    larger of the two chunk sizes and equal the resident rows; their statistics too."""
    with open_store(str(demo_store_master)) as s:
        spec = resolve_targets(s, "crepe-tiny", frame_targets=True)
        chunks = {s.features().array("values").chunks[0], s.embeddings("crepe-tiny").array(
            "frames").chunks[0]}
        mem = load_split(s, "train", spec, workers=0)
        stream = load_split(s, "train", spec, memory_limit=0, workers=0)
        assert mem.in_memory and stream.stream.streamed == ["t", "x"]
        assert stream.stream.unit == max(chunks)
        t_all = mem.stream.resident["t"]
        for b in stream.batches(8, torch.Generator().manual_seed(0)):
            assert torch.equal(b.t, t_all[np.searchsorted(mem.rows, b.rows)])
        (ma, sa), (mb, sb) = mem.target_stats(), stream.target_stats()
        torch.testing.assert_close(ma, mb, rtol=1e-6, atol=1e-7)
        assert sa == pytest.approx(sb, rel=1e-9)


def test_what_a_reader_process_receives_does_not_grow_with_the_rows(zarr_store):
    """The reader sent to a worker process carries no per-row table (each window's task carries
    its own rows), so a worker's memory does not grow with the number of items; the windows
    still read the right rows."""
    import pickle

    with open_store(zarr_store) as s:
        rows = split_rows(s, "train")
        arrays = {"x": s.features().array("values")}
        few = RowStream(arrays, rows[:64], memory_limit=0, workers=0)
        many = RowStream(arrays, rows, memory_limit=0, workers=0)
        sizes = [len(pickle.dumps(stream._reader)) for stream in (few, many)]
        assert sizes[1] - sizes[0] <= 8 < rows.nbytes  # (the row count itself is an int)
        tasks = many.plan(None)
        assert np.array_equal(np.concatenate([t.rows for t in tasks]), rows)
        got = np.concatenate([b["x"].numpy() for b in many.batches(100)])
        np.testing.assert_array_equal(got, arrays["x"].read_rows(rows).astype(np.float32))
