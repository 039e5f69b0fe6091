"""Reading a split's student inputs, labels and teacher targets from the store for training.

The log-mel inputs are the big array: they are read in blocks, one read per storage chunk,
never one row at a time. A split that fits the memory budget is loaded once as float32 and
batched from memory; a larger one is streamed: every epoch visits the chunks in a shuffled order
and shuffles rows inside a buffer of a few chunks, with the next buffer read in a background
thread while the current one trains. Targets (small) and labels always live in memory.

``--targets NAME`` resolves to ``targets/NAME`` (compressed targets from ``eastkd compress``)
and otherwise to ``embeddings/NAME`` (the raw teacher embeddings: ``clip``, or ``frames`` with
``frame_targets``), so one command covers the raw, PCA and learned rows of the paper's tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eastkd.store import OK, SKIPPED, EastkdError, Store

FEATURES = "logmel"
DEFAULT_MEMORY_LIMIT = 4 << 30  # bytes of float32 inputs held in memory before streaming
BUFFER_CHUNKS = 4  # chunks shuffled together when streaming


@dataclass
class TargetsSpec:
    """Where the distillation targets of a run come from, and what they are."""

    name: str
    section: str  # "targets/NAME" or "embeddings/NAME"
    array: str  # "values", "clip" or "frames"
    dim: int
    frame_level: bool
    attrs: dict[str, Any] = field(default_factory=dict)

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

    def provenance(self) -> dict[str, Any]:
        """What config.json records about the targets (section attributes included)."""
        return {"name": self.name, "section": self.section, "array": self.array,
                "dim": self.dim, "frame_level": self.frame_level, "alignment": self.alignment,
                "attrs": self.attrs}


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
    shape = sec.array(array).shape
    return TargetsSpec(name=name, section=sec.path, array=array, dim=int(shape[-1]),
                       frame_level=len(shape) == 3, attrs=sec.attrs)


def item_splits(store: Store, fold: int | None = None) -> np.ndarray:
    """Split name per item: the stored one, or re-derived from ``items.extra['fold']``."""
    items = store.items
    if fold is None:
        return np.asarray(items.splits, dtype=object)
    if "fold" not in items.extra:
        raise EastkdError(f"{store.path}: --fold {fold} needs an items column 'fold' (e.g. "
                          "ESC-50); this store has none, drop --fold")
    from eastkd.pipeline.datasets.esc50 import esc50_split_for_fold

    return np.asarray([esc50_split_for_fold(int(f), fold) for f in items.extra["fold"]],
                      dtype=object)


def split_rows(store: Store, split: str, targets: TargetsSpec | None = None,
               fold: int | None = None) -> np.ndarray:
    """Sorted store rows of ``split`` usable for training: features (and targets) OK, labelled.

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
    if not store.items.multi_label:
        mask &= store.items.label >= 0
    return np.flatnonzero(mask & ok)


def _chunk_groups(rows: np.ndarray, chunk: int) -> list[tuple[np.ndarray, int, int]]:
    """Positions into ``rows`` grouped by storage chunk, with each group's row span."""
    if len(rows) == 0:
        return []
    cid = rows // chunk
    breaks = np.flatnonzero(np.diff(cid)) + 1
    groups = []
    for pos in np.split(np.arange(len(rows)), breaks):
        groups.append((pos, int(rows[pos[0]]), int(rows[pos[-1]]) + 1))
    return groups


@dataclass
class Batch:
    """One training batch: inputs (B, n_mels, T) float32, labels, targets or None, store rows."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor | None
    rows: np.ndarray


class SplitData:
    """A split's inputs (in memory or streamed from the store), labels and targets."""

    def __init__(self, store: Store, split: str, rows: np.ndarray,
                 targets: TargetsSpec | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 buffer_chunks: int = BUFFER_CHUNKS) -> None:
        self.split = split
        self.rows = rows
        self.multi_label = store.items.multi_label
        if self.multi_label:
            self.labels = torch.from_numpy(store.items.labels[rows].astype(np.float32))
        else:
            self.labels = torch.from_numpy(store.items.label[rows].astype(np.int64))
        self.source = store.features(FEATURES).array("values")
        self.input_shape = tuple(int(s) for s in self.source.shape[1:])
        self.chunk = int(self.source.chunks[0])
        self.buffer_chunks = max(1, buffer_chunks)
        self.targets: torch.Tensor | None = None
        if targets is not None:
            kind, name = targets.section.split("/", 1)
            arr = store.section(kind, name).array(targets.array)
            self.targets = torch.from_numpy(arr.read_rows(rows).astype(np.float32))
        nbytes = len(rows) * int(np.prod(self.input_shape)) * 4
        self.in_memory = nbytes <= memory_limit
        self.inputs: torch.Tensor | None = None
        if self.in_memory:
            self.inputs = torch.from_numpy(
                self.source.read_rows(rows).astype(np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def input_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mel-bin mean and std over all items and frames of the split (for normalisation)."""
        n_mels = self.input_shape[0]
        s = np.zeros(n_mels)
        s2 = np.zeros(n_mels)
        count = 0
        for _, x in self._blocks(None):
            x64 = x.double()
            s += x64.sum(dim=(0, 2)).numpy()
            s2 += (x64 * x64).sum(dim=(0, 2)).numpy()
            count += x.shape[0] * x.shape[2]
        if count == 0:
            raise EastkdError(f"split {self.split!r} has no usable items; cannot compute input "
                              "statistics")
        mean = s / count
        std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
        return (torch.from_numpy(mean).float(),
                torch.from_numpy(np.maximum(std, 1e-5)).float())

    def _read_group(self, groups: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray,
                                                                               torch.Tensor]:
        pos = np.concatenate([g[0] for g in groups])
        parts = [self.source[lo:hi][self.rows[p] - lo] for p, lo, hi in groups]
        return pos, torch.from_numpy(np.concatenate(parts).astype(np.float32))

    def _blocks(self, generator: torch.Generator | None) -> Iterator[tuple[np.ndarray,
                                                                            torch.Tensor]]:
        """(positions, inputs) per buffer of chunks; chunk order shuffled with ``generator``.

        The next buffer is read in a background thread while the caller uses the current one.
        """
        if self.in_memory:
            assert self.inputs is not None
            yield np.arange(len(self.rows)), self.inputs
            return
        groups = _chunk_groups(self.rows, self.chunk)
        if generator is not None:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator)]
        windows = [groups[i:i + self.buffer_chunks]
                   for i in range(0, len(groups), self.buffer_chunks)]
        if not windows:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._read_group, windows[0])
            for i in range(len(windows)):
                cur = nxt.result()
                if i + 1 < len(windows):
                    nxt = pool.submit(self._read_group, windows[i + 1])
                yield cur

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                drop_last_below: int = 1) -> Iterator[Batch]:
        """Batches over the split; shuffled when ``generator`` is given, else in store order.

        In memory, each batch gathers its rows from the loaded tensor (no per-epoch copy).
        Streamed, rows are shuffled inside each buffer of chunks, and leftover rows of one
        buffer join the next, so every batch but the last has ``batch_size`` items. A final
        batch smaller than ``drop_last_below`` is dropped (BatchNorm and the distance
        correlation need at least two items).
        """
        if self.in_memory:
            assert self.inputs is not None
            n = len(self.rows)
            order = (torch.randperm(n, generator=generator) if generator is not None
                     else torch.arange(n))
            for b in range(0, n, batch_size):
                idx = order[b:b + batch_size]
                if len(idx) >= max(1, drop_last_below):
                    yield self._batch(idx.numpy(), self.inputs[idx])
            return
        carry_pos = np.empty(0, dtype=np.int64)
        carry_x = torch.empty((0,) + self.input_shape)
        for pos, x in self._blocks(generator):
            if generator is not None:
                perm = torch.randperm(len(pos), generator=generator)
                pos, x = pos[perm.numpy()], x[perm]
            if len(carry_pos):
                pos, x = np.concatenate([carry_pos, pos]), torch.cat([carry_x, x])
            n_full = len(pos) // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield self._batch(pos[b:b + batch_size], x[b:b + batch_size])
            carry_pos, carry_x = pos[n_full:], x[n_full:]
        if len(carry_pos) >= max(1, drop_last_below):
            yield self._batch(carry_pos, carry_x)

    def _batch(self, pos: np.ndarray, x: torch.Tensor) -> Batch:
        idx = torch.from_numpy(pos)
        t = self.targets[idx] if self.targets is not None else None
        return Batch(x=x, y=self.labels[idx], t=t, rows=self.rows[pos])


def load_split(store: Store, split: str, targets: TargetsSpec | None = None,
               fold: int | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
               buffer_chunks: int = BUFFER_CHUNKS) -> SplitData:
    """The usable rows of ``split`` with their inputs, labels and (optionally) targets."""
    rows = split_rows(store, split, targets, fold)
    return SplitData(store, split, rows, targets, memory_limit, buffer_chunks)


def skipped_count(store: Store, targets: TargetsSpec | None = None) -> int:
    """Items left out because a section marked them skipped."""
    bad = store.features(FEATURES).status() == SKIPPED
    if targets is not None:
        kind, name = targets.section.split("/", 1)
        bad |= store.section(kind, name).status() == SKIPPED
    return int(bad.sum())


def parse_bytes(text: str | int) -> int:
    """``"4G"``, ``"512M"``, ``"0"`` or a plain number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(float(s))
    except ValueError:
        raise EastkdError(f"--memory-limit {text!r}: expected a size like 4G, 512M or 0") from None
