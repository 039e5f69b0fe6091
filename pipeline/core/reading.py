"""The one reading path of distill, evaluate and compress: rows of a split, read in whole chunks.

*Which rows.* :func:`split_rows` picks the usable rows of a split (features and targets OK,
labelled), :func:`item_splits` re-derives splits for ``--fold``, and :func:`resolve_targets`
turns ``--targets NAME`` into ``targets/NAME`` (``eastkd compress``) or ``embeddings/NAME``.

*How they are read.* A :class:`RowStream` serves a set of item-aligned arrays (inputs, targets,
frame targets, embeddings) for those rows. Every array is either *resident* (read once, chunk by
chunk, into a float32 tensor) while the split fits the memory budget (smallest arrays first), or
*streamed*: each epoch reads every storage chunk that holds split rows exactly once, in whole
chunks, so memory stays bounded by the shuffle buffer whatever the number of items.

*Reading order* (also in ``docs/store-format.md``). The rows are grouped into read units: the
largest chunk (along items) of the streamed arrays, so every array's chunks line up with the
units (chunk sizes are powers of two). Each epoch the units are visited in a seeded random order
and dealt into windows of ``K`` units (the shuffle buffer: ``--shuffle-buffer`` bytes per
window; at most ``workers * 2 + 2`` windows are in memory at once); the rows of a window are
permuted together and cut into batches, the rows left over joining the next window. ``K``
random units drawn from the whole split give batches close to a full shuffle even on a dataset
stored class by class. Windows are read by
DataLoader worker processes (each opens the store itself, lazily; no handle crosses a fork) or,
with no workers, by one background thread; either way the windows arrive in plan order and each
carries its own permutation seed, so a seed gives the same batches with any number of workers.

*Views* (``extract --views K``). When the targets have a view axis, :class:`SplitData` serves
one view per item per epoch: the view is drawn by a counter-based generator of (seed, epoch,
store row) (:func:`epoch_views`, set with :meth:`SplitData.set_epoch`), so a resumed run draws
the same; the view's log-mel frames are cut out of the item's whole-clip log-mel at its offset
(whole hops) and its gain is added in the log domain; the target is that view's. Splits read
without targets (valid, test, evaluate, predict) get the whole clip.

Statistics (input mean/std per mel bin, target normalisation) are float64 streaming moments over
the chunks (Chan et al.'s pairwise merge): no whole-array float64 copies.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eastkd.store import (
    FEATURES,
    OK,
    SKIPPED,
    EastkdError,
    Store,
    StoreArray,
    access_options,
    configure_access,
    open_store,
    store_location,
)

DEFAULT_MEMORY_LIMIT = 4 << 30  # bytes of float32 rows held in memory before streaming
DEFAULT_SHUFFLE_BUFFER = 128 << 20  # bytes of streamed rows shuffled together (one window)
MAX_WINDOW_UNITS = 256  # more units per window add no diversity worth the latency
PREFETCH = 2  # windows read ahead per worker
STATS_BLOCK_BYTES = 16 << 20  # float32 bytes per block of a resident array in statistics

Group = tuple[np.ndarray, int, int]  # positions into the split's rows, and their row span


# -- which rows --------------------------------------------------------------------------------
@dataclass
class TargetsSpec:
    """Where the distillation targets of a run come from, and what they are."""

    name: str
    section: str  # "targets/NAME" or "embeddings/NAME"
    array: str  # "values", "clip" or "frames"
    dim: int
    frame_level: bool
    attrs: dict[str, Any] = field(default_factory=dict)
    views: int = 0  # K of targets with a view axis (extract --views K); 0: none
    views_path: str | None = None  # the (N, K, 3) view parameters (embeddings/KEY/views)

    @property
    def alignment(self) -> str:
        """How the student's features meet these targets in time (what the KD losses do)."""
        if self.frame_level:
            rate = self.attrs.get("frame_rate")
            offset = self.attrs.get("frame_offset") or 0.0
            return ("frame-level: the student's last conv stage averaged over frequency; each "
                    f"of its frames takes the target frame ({rate} /s, first centred at "
                    f"{offset} s) whose centre is nearest in time")
        return "clip-level: the student's last conv stage averaged over frequency and time"

    @property
    def path(self) -> str:
        """The targets' array path in the store."""
        return f"{self.section}/{self.array}"

    def provenance(self) -> dict[str, Any]:
        """What config.json records about the targets (section attributes included)."""
        return {"name": self.name, "section": self.section, "array": self.array,
                "dim": self.dim, "frame_level": self.frame_level, "alignment": self.alignment,
                "attrs": self.attrs,
                **({"views": self.views, "views_path": self.views_path} if self.views else {})}


def resolve_targets(store: Store, name: str, frame_targets: bool = False) -> TargetsSpec:
    """``targets/NAME`` if the store has it, else ``embeddings/NAME``; a clear error otherwise."""
    if store.has_section("targets", name):
        sec = store.targets(name)
        array = "frames" if frame_targets and sec.has("frames") else "values"
        if frame_targets and array != "frames":
            raise EastkdError(f"{store.path}: targets/{name} holds clip-level values only; "
                              "drop --frame-targets")
    elif store.has_section("embeddings", name):
        sec = store.embeddings(name)
        array = "frames" if frame_targets else "clip"
        if not sec.has(array):
            raise EastkdError(f"{store.path}: embeddings/{name} has no frame-level embeddings; "
                              "drop --frame-targets or extract again with --frames")
    else:
        have = ([f"targets/{n}" for n in store.section_names("targets")]
                + [f"embeddings/{n}" for n in store.section_names("embeddings")])
        raise EastkdError(f"{store.path}: no targets or embeddings named {name!r} (have: "
                          f"{', '.join(have) or 'none'}); run `eastkd compress` or choose one")
    if sec.kind == "targets":
        from eastkd.store.verify import stale_targets

        attrs = sec.attrs
        source = attrs.get("source")
        if source and store.has_section("embeddings", source):
            stale = stale_targets(store.path, name, attrs, store.embeddings(source).attrs)
            if stale:
                raise EastkdError(f"{store.path}: {stale}")
    shape = sec.array(array).shape
    attrs = sec.attrs
    views_path = (attrs.get("views") or {}).get("source") if kind_of(sec.path) == "targets" \
        else (f"{sec.path}/views" if sec.has("views") else None)
    views = int(shape[1]) if views_path else 0
    return TargetsSpec(name=name, section=sec.path, array=array, dim=int(shape[-1]),
                       frame_level=len(shape) - (1 if views else 0) == 3, attrs=attrs,
                       views=views, views_path=views_path)


def kind_of(section_path: str) -> str:
    """``"targets"`` of ``"targets/NAME"``."""
    return section_path.split("/", 1)[0]


def epoch_views(seed: int, epoch: int, rows: np.ndarray, k: int) -> np.ndarray:
    """The view (0..k-1) each store row trains on in ``epoch``: splitmix64 of (seed, epoch, row),
    a counter-based generator, so any subset of rows, in any order, on a resumed run, draws
    the same."""
    with np.errstate(over="ignore"):
        x = (np.asarray(rows, dtype=np.uint64)
             + np.uint64((seed * 1_000_003 + epoch) & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15))
        for mult, shift in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mult)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(k)).astype(np.int64)


def item_splits(store: Store, fold: int | None = None) -> np.ndarray:
    """Split name per item: the stored one, or re-derived from ``items.extra['fold']``."""
    items = store.items
    if fold is None:
        return np.asarray(items.splits, dtype=object)
    if "fold" not in items.extra:
        raise EastkdError(f"{store.path}: --fold {fold} needs an items column 'fold' (e.g. "
                          "ESC-50); this store has none, drop --fold")
    from eastkd.pipeline.datasets.esc50 import esc50_split_for_fold

    labelled = items.labelled_mask  # unlabelled items carry no fold: they stay train items
    return np.asarray([esc50_split_for_fold(int(f), fold) if ok else "train"
                       for f, ok in zip(items.extra["fold"], labelled)], dtype=object)


def split_rows(store: Store, split: str, targets: TargetsSpec | None = None,
               fold: int | None = None, labelled: bool | None = True) -> np.ndarray:
    """Sorted store rows of ``split`` usable for training: features (and targets) OK, and
    labelled (``labelled=True``, the default), unlabelled (``False``) or either (``None``).

    Skipped rows are left out; a section with pending rows is refused (its writer is unfinished).
    ``split='all'`` takes every item.
    """
    st = store.features(FEATURES).require_complete(
        "finish `eastkd extract` first (it continues where it stopped)")
    ok = st == OK
    if targets is not None:
        kind, name = targets.section.split("/", 1)
        sec = store.section(kind, name)
        hint = ("finish `eastkd compress` first" if kind == "targets"
                else "finish `eastkd extract` first (it continues where it stopped)")
        ok &= sec.require_complete(hint) == OK
    if split == "all":
        mask = np.ones(len(st), dtype=bool)
    else:
        mask = item_splits(store, fold) == split
    items = store.items
    has_label = items.labelled_mask & (items.multi_label or items.label >= 0)
    if labelled is not None:
        mask &= has_label if labelled else ~items.labelled_mask
    return np.flatnonzero(mask & ok)


def labelled_mask(items: Any) -> np.ndarray:
    """Items that carry a label: exactly one class (single-label) or at least one tag
    (multi-label). An all-zero label row is an unlabelled item."""
    if items.multi_label:
        return np.asarray(items.labels).reshape(len(items), -1).sum(axis=1) > 0
    return items.label >= 0


def read_pooled_rows(array: StoreArray, rows: np.ndarray) -> np.ndarray:
    """float32 (len(rows), D) of sorted unique ``rows`` of ``array``, read chunk by chunk;
    every axis between the items and the last (frames, views) is averaged per item."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), int(array.shape[-1])), dtype=np.float32)
    at = 0
    for block in iter_row_blocks(array, rows):
        if block.ndim > 2:
            block = block.reshape(len(block), -1, block.shape[-1]).mean(axis=1, dtype=np.float64)
        out[at:at + len(block)] = block
        at += len(block)
    return out


def skipped_count(store: Store, targets: TargetsSpec | None = None) -> int:
    """Items left out because a section marked them skipped."""
    bad = store.features(FEATURES).status() == SKIPPED
    if targets is not None:
        kind, name = targets.section.split("/", 1)
        bad |= store.section(kind, name).status() == SKIPPED
    return int(bad.sum())


def parse_bytes(text: str | int, option: str = "--memory-limit") -> int:
    """``"4G"``, ``"512M"``, ``"0"`` or a plain number of bytes -> bytes (errors name
    ``option``)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(float(s))
    except ValueError:
        raise EastkdError(f"{option} {text!r}: expected a size like 4G, 512M or 0") from None


def store_array(store: Store, path: str) -> StoreArray:
    """The array at ``kind/name/array`` (e.g. ``features/logmel/values``)."""
    kind, name, array = path.split("/", 2)
    return store.section(kind, name).array(array)


# -- reading in whole chunks -------------------------------------------------------------------
def chunk_groups(rows: np.ndarray, unit: int) -> list[Group]:
    """Positions into sorted ``rows`` grouped by read unit (``unit`` items), with row spans."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows // unit)) + 1
    return [(pos, int(rows[pos[0]]), int(rows[pos[-1]]) + 1)
            for pos in np.split(np.arange(len(rows)), breaks)]


def iter_row_blocks(array: StoreArray, rows: np.ndarray,
                    block_items: int | None = None) -> Iterator[np.ndarray]:
    """The data of sorted unique ``rows``, one block per chunk (or ``block_items`` items) that
    holds any of them, in store order; blocks without rows are not read."""
    step = int(block_items or array.chunks[0])
    for pos, lo, hi in chunk_groups(np.asarray(rows, dtype=np.int64), step):
        block = array[lo:hi]
        sel = rows[pos] - lo
        yield block if len(sel) == hi - lo else block[sel]


def _read_into(out: np.ndarray, array: StoreArray, rows: np.ndarray, groups: list[Group],
               offset: int = 0) -> int:
    """Fill ``out[offset:]`` with the rows of ``groups`` (one read per group); bytes read."""
    nbytes = 0
    at = offset
    for pos, lo, hi in groups:
        block = array[lo:hi]
        nbytes += block.nbytes
        out[at:at + len(pos)] = block[rows[pos] - lo]
        at += len(pos)
    return nbytes


class Moments:
    """Per-column float64 mean and variance merged block by block (Chan et al.)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, x: np.ndarray) -> None:
        """Merge the rows of a 2-D block."""
        k = x.shape[0]
        if k == 0:
            return
        x = x.astype(np.float64)
        bmean = x.mean(axis=0)
        x -= bmean
        bm2 = np.einsum("ij,ij->j", x, x)
        delta = bmean - self.mean
        total = self.n + k
        self.m2 += bm2 + delta * delta * (self.n * k / total)
        self.mean += delta * (k / total)
        self.n = total

    def merge(self, other: "Moments") -> None:
        """Merge the moments of another, disjoint set of rows."""
        if other.n == 0:
            return
        total = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / total)
        self.mean = self.mean + delta * (other.n / total)
        self.n = total

    @property
    def var(self) -> np.ndarray:
        """Population variance."""
        return self.m2 / max(1, self.n)


def default_workers() -> int:
    """Reader processes for a streamed split: half the CPU cores, 1 to 4."""
    return int(np.clip((os.cpu_count() or 2) // 2, 1, 4))


_END = object()


def _ahead(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, each produced in a background thread while the caller uses the one before."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(next, items, _END)
        while True:
            cur = nxt.result()
            if cur is _END:
                return
            nxt = pool.submit(next, items, _END)
            yield cur


# -- the stream --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadTask:
    """One window: the read units it holds, the seed that permutes its rows (or None), and
    the store rows of the groups' positions, in order (so a reader needs no split-sized
    table: its memory does not grow with the number of items)."""

    groups: tuple[Group, ...]
    seed: int | None
    rows: np.ndarray


def _window_groups(groups: list[Group]) -> list[Group]:
    """``groups`` with positions into the window's own rows (0, 1, ...) instead of the
    split's."""
    out, at = [], 0
    for pos, lo, hi in groups:
        out.append((np.arange(at, at + len(pos)), lo, hi))
        at += len(pos)
    return out


_MMAP_THRESHOLD = -3  # glibc's mallopt parameter M_MMAP_THRESHOLD
LARGE_BLOCK = 4 << 20  # bytes from which an allocation is its own mapping


@functools.cache
def return_large_blocks() -> None:
    """Make every allocation of :data:`LARGE_BLOCK` bytes or more its own mapping, given back
    to the system when freed (glibc; a no-op elsewhere). Once per process.

    By default glibc raises that threshold after the first large block is freed (up to 32 MB);
    the blocks a stream allocates (windows, chunks, their float64 statistics: a few MB each,
    of varying sizes) then come from the heap and fragment it, so that a process's memory grew
    with the number of windows read, i.e. with the number of items (reader processes by
    1.6x from 20k to 80k items). Fixed, the memory is flat in the number of items."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_MMAP_THRESHOLD, LARGE_BLOCK)
    except (OSError, AttributeError):  # not glibc
        pass


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere): done before reader processes fork, which would otherwise start with them
    counted in their memory (the freed remains of reading the items table grow with N)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _WindowReader(torch.utils.data.Dataset):
    """Reads a window of streamed arrays; each process opens the store itself, on first use,
    with the storage options and chunk cache of the process that made the reader."""

    def __init__(self, arrays: dict[str, StoreArray], n_rows: int) -> None:
        self.n_rows = n_rows
        self.paths = {k: a.path for k, a in arrays.items()}
        # absolute: a reader from the fork server runs in the folder the server started in
        self.store_path = store_location(next(iter(arrays.values())).backend.path)
        self.access = access_options()  # a store at a URL: its options reach the workers too
        self._arrays: dict[str, StoreArray] | None = dict(arrays)
        self._pid: int | None = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_arrays=None, _pid=None)  # never carry an open handle into another process
        return state

    def arrays(self) -> dict[str, StoreArray]:
        if self._arrays is None or self._pid != os.getpid():
            # a spawned worker starts with no storage options and no chunk cache configured
            configure_access(self.access.storage_options, self.access.cache_dir)
            return_large_blocks()  # inherited when forked; not when spawned
            store = open_store(self.store_path)
            self._arrays = {k: store_array(store, p) for k, p in self.paths.items()}
            self._pid = os.getpid()
        return self._arrays

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, task: ReadTask) -> dict[str, torch.Tensor]:
        groups = list(task.groups)
        pos = np.concatenate([g[0] for g in groups])
        out = {"pos": torch.from_numpy(pos)}
        nbytes = 0
        local = _window_groups(groups)
        for name, arr in self.arrays().items():
            data = np.empty((len(pos),) + tuple(arr.shape[1:]), dtype=np.float32)
            nbytes += _read_into(data, arr, task.rows, local)
            out[name] = torch.from_numpy(data)
        if task.seed is not None:
            perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(task.seed))
            out = {k: v[perm] for k, v in out.items()}
        out["read_bytes"] = torch.tensor(nbytes, dtype=torch.int64)
        return out


class _TaskSampler(torch.utils.data.Sampler):
    """The current epoch's windows, replaced each epoch (the DataLoader's workers persist)."""

    def __init__(self) -> None:
        self.tasks: list[ReadTask] = []

    def __iter__(self) -> Iterator[ReadTask]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


class RowStream:
    """Item-aligned arrays read for ``rows``: resident tensors or windows streamed in chunks.

    ``memory_limit`` bytes (float32) of arrays are made resident, smallest first; the rest are
    streamed in windows of read units of about ``shuffle_buffer`` bytes each (the rows shuffled
    together; ``workers * PREFETCH + 2`` windows at most are in memory at once), read by
    ``workers`` reader processes ( None: :func:`default_workers` when anything is streamed;
    pinned memory with ``pin_memory``; ``context`` names the workers' start method). A
    streaming process returns large blocks to the system (:func:`return_large_blocks`), so
    its memory and its readers' do not grow with the number of items.
    """

    def __init__(self, arrays: dict[str, StoreArray], rows: np.ndarray, *,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, workers: int | None = None,
                 pin_memory: bool = False, context: str | None = None) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shapes = {k: tuple(int(s) for s in a.shape[1:]) for k, a in arrays.items()}
        self.pin_memory = bool(pin_memory)
        self.context = context  # multiprocessing start method of the workers (None: default)
        self.resident: dict[str, torch.Tensor] = {}
        self.resident_bytes = 0
        self.last_read_bytes = 0  # bytes read from the store by the last streamed pass
        budget = int(memory_limit)
        streamed: dict[str, StoreArray] = {}
        for name, arr in sorted(arrays.items(), key=lambda kv: self.row_bytes(kv[0])):
            need = self.row_bytes(name) * len(self.rows)
            if need <= budget:
                self.resident[name] = self._load(arr)
                budget -= need
                self.resident_bytes += need
            else:
                streamed[name] = arr
        self.streamed = list(streamed)
        if streamed:
            return_large_blocks()
        self.workers = (0 if not streamed else default_workers() if workers is None
                        else max(0, int(workers)))
        self.unit = max((int(a.chunks[0]) for a in streamed.values()), default=1)
        self._reader = _WindowReader(streamed, len(self.rows)) if streamed else None
        unit_bytes = self.unit * sum(self.row_bytes(k) for k in streamed)
        self.window_units = int(np.clip(shuffle_buffer // max(1, unit_bytes),
                                        1, MAX_WINDOW_UNITS))
        self._loader: torch.utils.data.DataLoader | None = None
        self._sampler = _TaskSampler()

    def __len__(self) -> int:
        return len(self.rows)

    def row_bytes(self, name: str) -> int:
        """float32 bytes of one row of array ``name``."""
        return int(np.prod(self.shapes[name], dtype=np.int64)) * 4

    @property
    def in_memory(self) -> bool:
        return not self.streamed

    def _load(self, arr: StoreArray) -> torch.Tensor:
        """The array's rows as one float32 tensor, filled chunk by chunk (no whole copies)."""
        data = np.empty((len(self.rows),) + tuple(arr.shape[1:]), dtype=np.float32)
        _read_into(data, arr, self.rows, chunk_groups(self.rows, int(arr.chunks[0])))
        return torch.from_numpy(data)

    # -- planning ------------------------------------------------------------------------------
    def plan(self, generator: torch.Generator | None) -> list[ReadTask]:
        """This epoch's windows: units in a seeded random order (store order without a
        generator), ``window_units`` per window, each with its own permutation seed."""
        groups = chunk_groups(self.rows, self.unit)
        if generator is not None:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator)]
        k = self.window_units
        windows = [tuple(groups[i:i + k]) for i in range(0, len(groups), k)]
        seeds: list[int | None] = [None] * len(windows)
        if generator is not None:
            seeds = torch.randint(0, 2**62, (len(windows),), generator=generator).tolist()
        return [ReadTask(w, s, self.rows[np.concatenate([g[0] for g in w])])
                for w, s in zip(windows, seeds)]

    def _windows(self, tasks: list[ReadTask]) -> Iterator[dict[str, torch.Tensor]]:
        """The windows of ``tasks`` in order, read ahead by workers or one thread."""
        assert self._reader is not None
        if self.workers:
            yield from self._worker_loader(tasks)
            return
        reader = self._reader
        yield from _ahead(self._pinned(reader[t]) for t in tasks)

    def _pinned(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.pin_memory() for k, v in batch.items()} if self.pin_memory else batch

    def _worker_loader(self, tasks: list[ReadTask]) -> Iterator[dict[str, torch.Tensor]]:
        if self._loader is None:
            trim_heap()
            self._loader = torch.utils.data.DataLoader(
                self._reader, sampler=self._sampler, batch_size=None,
                num_workers=self.workers, pin_memory=self.pin_memory,
                persistent_workers=True, prefetch_factor=PREFETCH,
                multiprocessing_context=self.context,
                generator=torch.Generator())  # the global RNG is not the loader's to draw from
        self._sampler.tasks = tasks
        yield from self._loader

    def close(self) -> None:
        """Stop the reader processes (they persist between epochs otherwise)."""
        self._loader = None

    # -- batches -------------------------------------------------------------------------------
    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                drop_last_below: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Dicts of ``pos`` (positions into ``rows``) and every array, ``batch_size`` rows each;
        shuffled with ``generator``, else in store order. A final batch smaller than
        ``drop_last_below`` is dropped."""
        keep = max(1, drop_last_below)
        if self.in_memory:
            n = len(self.rows)
            order = (torch.randperm(n, generator=generator) if generator is not None
                     else torch.arange(n))
            cuts = (order[b:b + batch_size] for b in range(0, n, batch_size))
            gathered = ({"pos": idx, **{k: v[idx] for k, v in self.resident.items()}}
                        for idx in cuts if len(idx) >= keep)
            # for a GPU: gather and pin the next batch while the device trains on this one
            yield from _ahead(self._pinned(b) for b in gathered) if self.pin_memory else gathered
            return
        carry: dict[str, torch.Tensor] | None = None
        self.last_read_bytes = 0
        for window in self._windows(self.plan(generator)):
            self.last_read_bytes += int(window.pop("read_bytes"))
            if carry is not None:
                window = {k: torch.cat([carry[k], v]) for k, v in window.items()}
            n = len(window["pos"])
            n_full = n // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield self._with_resident({k: v[b:b + batch_size] for k, v in window.items()})
            carry = {k: v[n_full:] for k, v in window.items()}
        if carry is not None and len(carry["pos"]) >= keep:
            yield self._with_resident(carry)

    def _with_resident(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for k, v in self.resident.items():
            batch[k] = v[batch["pos"]]
        return batch

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        """Array ``name`` in blocks (resident: slices; streamed: per window), for statistics."""
        if name in self.resident:
            data = self.resident[name]
            step = max(1, STATS_BLOCK_BYTES // max(1, self.row_bytes(name)))
            for i in range(0, len(data), step):
                yield data[i:i + step]
            return
        for batch in self.batches(self.window_units * self.unit):
            yield batch[name]

    def moments(self, name: str, axis: int = -1) -> Moments:
        """Float64 moments per index of ``axis`` (of the array with its item axis) over every
        other axis of array ``name``."""
        m = Moments(((len(self.rows),) + self.shapes[name])[axis])
        for x in self.blocks(name):
            x = torch.movedim(x, axis, -1)
            m.update(x.reshape(-1, x.shape[-1]).numpy())
        return m


# -- a split for training ----------------------------------------------------------------------
@dataclass
class Batch:
    """One training batch: inputs (B, n_mels, T) float32, labels, targets or None, store rows."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor | None
    rows: np.ndarray


class SplitData:
    """A split's inputs and targets (a :class:`RowStream`) with its labels, batch by batch."""

    def __init__(self, store: Store, split: str, rows: np.ndarray,
                 targets: TargetsSpec | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, workers: int | None = None,
                 pin_memory: bool = False) -> None:
        self.split = split
        self.rows = rows
        self.multi_label = store.items.multi_label
        self._labels = (store.items.labels[rows] if self.multi_label
                        else store.items.label[rows].astype(np.int64))
        arrays = {"x": store_array(store, f"features/{FEATURES}/values")}
        if targets is not None:
            arrays["t"] = store_array(store, targets.path)
        self.stream = RowStream(arrays, rows, memory_limit=memory_limit,
                                shuffle_buffer=shuffle_buffer, workers=workers,
                                pin_memory=pin_memory)
        self.input_shape = self.stream.shapes["x"]
        self.has_targets = targets is not None
        self._norm: tuple[torch.Tensor, float] | None = None
        self.views = ViewCuts.of(store, targets, rows) if targets is not None else None
        if self.views is not None:
            self.input_shape = (self.input_shape[0], self.views.frames)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Draw this epoch's view of every item (targets with views only; else nothing)."""
        if self.views is not None:
            self.views.draw(seed, epoch)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def in_memory(self) -> bool:
        return self.stream.in_memory

    @property
    def resident_bytes(self) -> int:
        return self.stream.resident_bytes

    @property
    def workers(self) -> int:
        return self.stream.workers

    @property
    def labels(self) -> torch.Tensor:
        """Every row's label: class indices, or multi-hot float rows if multi-label."""
        y = torch.from_numpy(self._labels)
        return y.float() if self.multi_label else y

    def close(self) -> None:
        self.stream.close()

    def _moments(self, name: str, axis: int, others: Sequence[SplitData]) -> Moments:
        m = self.stream.moments(name, axis)
        for other in others:
            m.merge(other.stream.moments(name, axis))
        return m

    def input_stats(self, others: Sequence[SplitData] = ()
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mel-bin mean and std over all items and frames of the split (and of ``others``,
        e.g. the unlabelled train rows), for normalisation."""
        m = self._moments("x", 1, others)
        if m.n == 0:
            raise EastkdError(f"split {self.split!r} has no usable items; cannot compute input "
                              "statistics")
        return (torch.from_numpy(m.mean).float(),
                torch.from_numpy(np.maximum(np.sqrt(m.var), 1e-5)).float())

    def target_stats(self, others: Sequence[SplitData] = ()) -> tuple[torch.Tensor, float]:
        """Targets' centre (per dim) and one overall scale (RMS of the per-dim std), over the
        split and ``others``."""
        m = self._moments("t", -1, others)
        return torch.from_numpy(m.mean).float(), float(max(np.sqrt(m.var.mean()), 1e-8))

    def normalise_targets(self, mean: torch.Tensor, scale: float) -> None:
        """Batches carry ``(t - mean) / scale`` from now on."""
        self._norm = (mean, scale)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                drop_last_below: int = 1) -> Iterator[Batch]:
        """Batches over the split; shuffled when ``generator`` is given, else in store order.

        Every batch but the last has ``batch_size`` items; a final batch smaller than
        ``drop_last_below`` is dropped (BatchNorm and the distance correlation need two items).
        """
        for b in self.stream.batches(batch_size, generator, drop_last_below):
            pos = b["pos"].numpy()
            y = torch.from_numpy(self._labels[pos])
            t = b.get("t")
            if self.views is not None:
                b["x"], t = self.views.cut(pos, b["x"], t)
            if t is not None and self._norm is not None:
                t = (t - self._norm[0]) / self._norm[1]
            yield Batch(x=b["x"], y=y.float() if self.multi_label else y, t=t,
                        rows=self.rows[pos])


class ViewCuts:
    """One view per item and epoch, cut out of the whole-clip log-mel (see the module's
    *Views*): the split's view offsets in hops and gains in log-mel units, resident."""

    def __init__(self, hops: np.ndarray, log_gains: np.ndarray, frames: int,
                 rows: np.ndarray) -> None:
        self.hops = torch.from_numpy(hops)  # (n, K) int64
        self.log_gains = torch.from_numpy(log_gains.astype(np.float32))  # (n, K)
        self.frames = int(frames)  # log-mel frames of one view
        self.rows = rows
        self.k = int(hops.shape[1])
        self.chosen = torch.zeros(len(rows), dtype=torch.int64)

    @classmethod
    def of(cls, store: Store, targets: TargetsSpec, rows: np.ndarray) -> "ViewCuts | None":
        """The cuts of ``rows`` for targets with views (None without)."""
        if not targets.views:
            return None
        from eastkd.pipeline.core.features import LogMelParams
        from eastkd.pipeline.core.views import GAIN, OFFSET, log_gain, offset_hops

        lm = LogMelParams(**store.features(FEATURES).attrs["params"])
        kind, name, array = targets.views_path.split("/", 2)
        params = store.section(kind, name).array(array).read_rows(rows)
        seconds = float(store.section(kind, name).attrs["views"]["seconds"])
        frames = lm.n_frames(int(round(seconds * lm.sample_rate)))
        return cls(offset_hops(params[..., OFFSET], lm), log_gain(params[..., GAIN]), frames,
                   rows)

    def draw(self, seed: int, epoch: int) -> None:
        self.chosen = torch.from_numpy(epoch_views(seed, epoch, self.rows, self.k))

    def cut(self, pos: np.ndarray, x: torch.Tensor,
            t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs (B, M, T_clip) -> (B, M, frames) of each item's chosen view (plus its gain);
        targets (B, K, ...) -> (B, ...) of that view."""
        p = torch.from_numpy(pos)
        v = self.chosen[p]
        hop = self.hops[p, v]
        idx = (hop[:, None] + torch.arange(self.frames))[:, None, :].expand(-1, x.shape[1], -1)
        x = torch.gather(x, 2, idx) + self.log_gains[p, v][:, None, None]
        if t is not None:
            t = t[torch.arange(len(p)), v]
        return x, t


def load_split(store: Store, split: str, targets: TargetsSpec | None = None,
               fold: int | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
               shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, workers: int | None = None,
               pin_memory: bool = False, labelled: bool | None = True) -> SplitData:
    """The usable rows of ``split`` with their inputs, labels and (optionally) targets:
    labelled rows (default), unlabelled ones (``labelled=False``; labels -1 or all-zero
    rows, never a task loss's) or both (None); see :func:`split_rows`."""
    rows = split_rows(store, split, targets, fold, labelled)
    return SplitData(store, split, rows, targets, memory_limit, shuffle_buffer, workers,
                     pin_memory)
