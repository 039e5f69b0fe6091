"""Turn a dataset into the store's items table: each file's sha256 and duration, read once.

Files are hashed in parallel threads (reading and sha256 release the GIL). The table records each
file's size and modification time (columns ``file_size``, ``file_mtime_ns``), so that a resume,
another shard or another teacher on the same store reuses the hashes of unchanged files and reads
no audio for indexing; ``rehash`` hashes every file again.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from eastkd.pipeline.core.audio import AudioError, duration_seconds, file_sha256
from eastkd.pipeline.datasets.base import DatasetSpec
from eastkd.progress import Progress, progress_bar
from eastkd.store import ItemsTable

MISSING = "missing"
UNHASHED = "unhashed"
SIZE, MTIME = "file_size", "file_mtime_ns"  # items columns keying the cached hashes


def file_stat(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file; (-1, -1) if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return int(st.st_size), int(st.st_mtime_ns)


def _hash_one(path: str) -> tuple[str, float, tuple[int, int]]:
    stat = file_stat(path)  # before reading: a change while hashing shows up next time
    try:
        digest = file_sha256(path)
    except AudioError:
        return MISSING, float("nan"), (-1, -1)
    return digest, duration_seconds(path), stat


def build_items_table(spec: DatasetSpec, progress: Progress = False, workers: int = 4,
                      known: ItemsTable | None = None, rehash: bool = False,
                      hash_files: bool = True) -> ItemsTable:
    """Items table of ``spec``; an unreadable file gets sha256 ``"missing"`` (extract says so).

    ``known`` is the table of an existing store for the same items: its hashes are reused
    (without reading the files) unless ``rehash``. A file whose size or mtime differs from the
    recorded one keeps the recorded hash here; extract checks its bytes before using it.
    ``hash_files=False`` reads nothing (sha256 ``"unhashed"``): enough to tell another dataset.
    """
    paths = [it.path for it in spec.items]
    n = len(paths)
    sha: list[str] = [MISSING] * n
    durations = np.full(n, np.nan, dtype=np.float32)
    stats = np.full((n, 2), -1, dtype=np.int64)
    cached = _reusable(known, spec) and not rehash
    todo = [] if cached or not hash_files else list(range(n))
    if not hash_files:
        sha = [UNHASHED] * n
    if cached:
        sha, durations = list(known.sha256), known.durations.astype(np.float32).copy()
        stats[:, 0], stats[:, 1] = known.extra[SIZE], known.extra[MTIME]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_hash_one, [paths[i] for i in todo])
        for i, (digest, dur, stat) in zip(todo, progress_bar(
                results, total=len(todo), desc="indexing", unit="file", leave=False,
                progress=progress if todo else False)):
            sha[i], durations[i], stats[i] = digest, dur, stat
    return _table(spec, sha, durations, stats)


def _reusable(known: ItemsTable | None, spec: DatasetSpec) -> bool:
    return (known is not None and SIZE in known.extra and MTIME in known.extra
            and known.ids == [it.id for it in spec.items]
            and known.paths == [it.path for it in spec.items])


def _table(spec: DatasetSpec, sha: list[str], durations: np.ndarray,
           stats: np.ndarray) -> ItemsTable:
    spec.check_unlabelled()
    n, c = len(spec.items), len(spec.class_names)
    labels = np.zeros((n, max(c, 1)), dtype=np.uint8)
    for i, item in enumerate(spec.items):
        labels[i, item.labels] = 1
    extra_keys = sorted({k for it in spec.items for k in it.extra})
    extra = {k: np.asarray([it.extra.get(k) for it in spec.items]) for k in extra_keys}
    extra[SIZE], extra[MTIME] = stats[:, 0].copy(), stats[:, 1].copy()
    return ItemsTable(
        ids=[it.id for it in spec.items],
        paths=[it.path for it in spec.items],
        sha256=sha,
        durations=durations,
        splits=[it.split for it in spec.items],
        labels=labels,
        class_names=list(spec.class_names),
        multi_label=bool(spec.multi_label),
        extra=extra,
        labelled=np.asarray([it.labelled for it in spec.items], dtype=bool),
    )
