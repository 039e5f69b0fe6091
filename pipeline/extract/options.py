"""What an extract run is asked to do (:class:`ExtractOptions`) and what it did."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.core.audio import DEFAULT_RESAMPLER
from eastkd.pipeline.core.features import LogMelParams
from eastkd.pipeline.core.views import ViewSpec
from eastkd.progress import Progress
from eastkd.store import FEATURES  # noqa: F401 - re-exported as eastkd.pipeline.extract.FEATURES

ON_ERROR = ("fail", "skip")
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Decode workers when not given: the cores this process may use, minus one for the main
    process, at most :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cores - 1))


@dataclass
class ExtractOptions:
    """Everything that decides what extract writes (recorded as provenance) and how it runs."""

    teacher: str = "crepe-tiny"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    segment: float | None = None
    crop: str = "start"
    dtype: str = "float16"
    frames: bool = False
    logmel: LogMelParams = field(default_factory=LogMelParams)
    resampler: str = DEFAULT_RESAMPLER
    batch_size: int = 16
    batch_seconds: float | None = None  # if set: clips per batch = batch_seconds // segment
    workers: int | None = None  # None: default_workers()
    device: str = "auto"
    on_error: str = "fail"
    overwrite: bool = False
    rehash: bool = False  # hash every file again instead of trusting (path, size, mtime)
    shard: tuple[int, int] = (0, 1)
    units: list[int] | None = None  # only these unit indices (e.g. one dask task's)
    progress: Progress = False
    chunk_items: int | None = None  # cap on items per chunk (power of two) of new sections
    allow_duplicates: bool = False  # accept the same audio in two splits (recorded)
    views: int = 1  # K seeded views per item (1: one view, the segment: today's layout)
    view_seconds: float | None = None  # each view's length (a random crop); None: the segment
    view_gain_db: float = 0.0  # each view's gain: uniform in +-G dB (0: none)
    view_seed: int = 0  # views are seeded by (view_seed, item id, view)

    @property
    def view_spec(self) -> ViewSpec:
        return ViewSpec(self.views, self.view_seconds, float(self.view_gain_db),
                        int(self.view_seed))

    def resolved_workers(self) -> int:
        return default_workers() if self.workers is None else max(0, int(self.workers))


@dataclass
class ExtractSummary:
    store: str
    key: str
    teacher: str
    items: int
    written: int
    skipped_now: int
    already_done: int
    seconds: float
    audio_seconds: float
    forward_seconds: float
    skipped: list[tuple[str, str]]
    first_batch_seconds: float = 0.0  # filling the pipeline: workers start, first decode

    @property
    def clips_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def lines(self, most: int = 10) -> list[str]:
        """The summary a user reads: one line of counts and speed, then up to ``most`` skipped
        items with their reasons."""
        rate = f"{self.clips_per_second:.1f} clips/s" if self.written else "nothing to do"
        out = [
            f"extract {self.teacher} -> {self.store} [{self.key}]: {self.written} written, "
            f"{self.skipped_now} skipped now, {self.already_done} already done, of {self.items} "
            f"items in {self.seconds:.1f} s ({rate}; "
            f"{self.audio_seconds / max(self.seconds, 1e-9):.1f} audio s/s; "
            f"teacher forward {self.forward_seconds:.1f} s)"
        ]
        if self.skipped:
            out.append(f"{len(self.skipped)} item(s) skipped in total (see `eastkd info`):")
            out += [f"  {item_id}: {reason}" for item_id, reason in self.skipped[:most]]
            if len(self.skipped) > most:
                out.append(f"  ... and {len(self.skipped) - most} more")
        return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EastkdError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise EastkdError(f"--shard {text!r}: need 0 <= I < N")
    return i, n
