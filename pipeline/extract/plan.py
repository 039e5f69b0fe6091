"""What an extract run does: units, batches, the segment and the chunk sizes.

A *unit* is a run of items covering whole chunks of every array the run writes (the largest
chunk along items of both sections; chunk sizes are powers of two, so the boundaries line up).
``--shard I/N`` gives unit ``u`` to the process with ``u % N == I`` and ``ExtractOptions.units``
picks units by index, so writers never share a chunk. A unit is also the write block: each data
chunk is written once, as soon as its rows are computed, and the unit's status last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eastkd.pipeline.core.audio import Segment
from eastkd.store import PENDING, EastkdError

MIN_UNITS = 8  # small datasets get at least this many units, so an interrupt keeps clips
OUTLIER_RATIO = 1.25  # the longest clip may exceed the median by this factor without --segment


@dataclass(frozen=True)
class Unit:
    """Items ``start:stop`` (unit number ``index``); ``features``: log-mel still to write."""

    index: int
    start: int
    stop: int
    features: bool


@dataclass(frozen=True)
class Batch:
    """One teacher forward: items ``start:stop`` of ``unit`` (never straddles a unit)."""

    unit: Unit
    start: int
    stop: int


def default_chunk_cap(n_items: int, batch_size: int) -> int:
    """Items per chunk cap (a power of two) giving a dataset at least :data:`MIN_UNITS` units,
    but never units smaller than a batch (batches restart at every unit); only small datasets
    are affected (large ones hit the 4 MB chunk target first)."""
    per_unit = max(1, -(-n_items // MIN_UNITS))
    return max(1 << (per_unit.bit_length() - 1), 1 << max(0, batch_size - 1).bit_length())


def resolve_segment(seconds: float | None, crop: str, durations: np.ndarray,
                    ids: list[str]) -> Segment:
    """The segment every clip is cut or padded to: ``seconds`` if given, else the longest clip,
    refused when that one clip is an outlier (it would set the length, and the memory, of all)."""
    if seconds is not None:
        if seconds <= 0:
            raise EastkdError("--segment must be positive (seconds)")
        return Segment(float(seconds), crop)
    ok = np.isfinite(durations)
    if not ok.any():
        raise EastkdError("no readable audio in the dataset; check the paths in the manifest")
    finite = durations[ok]
    longest, median = float(finite.max()), float(np.median(finite))
    if longest > OUTLIER_RATIO * median:
        j = int(np.flatnonzero(ok)[np.argmax(finite)])
        raise EastkdError(
            f"clip lengths vary from {finite.min():.2f} s to {longest:.2f} s (median {median:.2f} "
            f"s; longest: {ids[j]!r}); the longest would set the segment of every clip: pass "
            f"--segment SECONDS (e.g. --segment {math.ceil(median * 100) / 100:g})")
    return Segment(math.ceil(longest * 100) / 100, crop)


def plan_units(n: int, unit: int, shard: tuple[int, int], only: list[int] | None,
               emb_status: np.ndarray, feat_status: np.ndarray) -> tuple[list[Unit], int]:
    """Units this run must compute (any row pending in either section) and the number of items
    of its units that are already done."""
    shard_i, shard_n = shard
    n_units = -(-n // unit)
    if only is not None:
        bad = [u for u in only if not 0 <= u < n_units]
        if bad:
            raise EastkdError(f"units {bad} out of range: this store has {n_units} units "
                              f"(0..{n_units - 1})")
    wanted = set(only) if only is not None else None
    todo, already = [], 0
    for u in range(n_units):
        if u % shard_n != shard_i or (wanted is not None and u not in wanted):
            continue
        s, e = u * unit, min(n, (u + 1) * unit)
        feat_pending = bool((feat_status[s:e] == PENDING).any())
        if not feat_pending and not (emb_status[s:e] == PENDING).any():
            already += e - s
            continue
        todo.append(Unit(u, s, e, feat_pending))
    return todo, already


def batch_size_for(batch_size: int, batch_seconds: float | None, segment: Segment) -> int:
    """Clips per forward: ``batch_seconds`` of audio (every clip is one segment long) when
    given, else ``batch_size``."""
    if batch_seconds is None:
        return batch_size
    if batch_seconds <= 0:
        raise EastkdError("--batch-seconds must be positive")
    return max(1, int(batch_seconds // segment.seconds))


def plan_batches(units: list[Unit], batch_size: int) -> list[Batch]:
    """Batches of at most ``batch_size`` items, in item order, restarting at every unit (so a
    resumed unit is computed in exactly the batches of an uninterrupted run)."""
    return [Batch(u, s, min(u.stop, s + batch_size)) for u in units
            for s in range(u.start, u.stop, batch_size)]
