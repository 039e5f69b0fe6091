"""Consistent augmented views: K seeded crops (and gains) of each clip, each run through the
teacher, so that a student trained from the store can be augmented without losing its targets.

A view of item ``i`` is drawn by a generator seeded from (``seed``, the item's id, the view's
number) alone, so every shard, dask worker or resumed run computes the same view. Its offset
inside the segment lies on the student's log-mel hop grid: view frame ``j`` of the student's
log-mel is frame ``offset_hops + j`` of the whole-clip log-mel stored once per item (exact up
to the STFT window at the view's edges). The gain is a uniform draw in ``[-gain_db, gain_db]``
applied to the teacher's waveform; distill adds it to the student's log-mel in the log domain.

The parameters are stored per item and view in ``embeddings/<key>/views`` (items x K x 3:
offset in seconds, gain in dB, the generator's seed); see ``docs/store-format.md``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eastkd.errors import EastkdError
from eastkd.pipeline.core.audio import Segment
from eastkd.pipeline.core.features import LogMelParams

PARAMS = ("offset_seconds", "gain_db", "seed")  # the last axis of the stored ``views`` array
OFFSET, GAIN, SEED = range(3)


@dataclass(frozen=True)
class ViewSpec:
    """What ``extract --views K --view-seconds S --view-gain-db G --view-seed N`` asks for.

    ``seconds`` None means views as long as the segment (only the gain differs)."""

    k: int = 1
    seconds: float | None = None
    gain_db: float = 0.0
    seed: int = 0

    @property
    def on(self) -> bool:
        """Whether the store gets a view axis (K > 1); K = 1 is today's layout."""
        return self.k > 1

    def check(self, segment: Segment | None = None) -> None:
        """One-line errors for settings that cannot work (``segment``: the clip's length)."""
        if self.k < 1:
            raise EastkdError(f"--views {self.k}: must be at least 1")
        if not self.on and (self.seconds is not None or self.gain_db):
            raise EastkdError("--view-seconds and --view-gain-db need --views K with K > 1")
        if self.seconds is not None and self.seconds <= 0:
            raise EastkdError(f"--view-seconds {self.seconds:g}: must be positive")
        if self.gain_db < 0:
            raise EastkdError(f"--view-gain-db {self.gain_db:g}: must be >= 0 (a range ±G dB)")
        if segment is not None and self.seconds is not None and self.seconds > segment.seconds:
            raise EastkdError(f"--view-seconds {self.seconds:g} is longer than the segment "
                              f"({segment.seconds:g} s): shorten it or lengthen --segment")

    def view_segment(self, segment: Segment) -> Segment:
        """The length each view has (the teacher's input length)."""
        return Segment(segment.seconds if self.seconds is None else float(self.seconds),
                       segment.crop)

    def identity(self) -> dict[str, Any]:
        """What the views add to the embeddings' identity (nothing for K = 1)."""
        if not self.on:
            return {}
        return {"views": {"k": self.k, "seconds": self.seconds, "gain_db": self.gain_db,
                          "seed": self.seed, "grid": "student log-mel hop"}}


def view_seed(seed: int, item_id: str, view: int) -> int:
    """The 32-bit seed of view ``view`` of item ``item_id``: a hash of the three, independent
    of the item's position, shard and run."""
    digest = hashlib.sha256(f"{seed}\0{item_id}\0{view}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def max_offset_hops(spec: ViewSpec, segment: Segment, lm: LogMelParams) -> int:
    """The last hop a view may start at and still lie inside the segment (at the student's rate;
    the view's log-mel frames then lie inside the whole clip's)."""
    whole = segment.samples(lm.sample_rate)
    view = spec.view_segment(segment).samples(lm.sample_rate)
    return max(0, (whole - view) // lm.hop_length)


def view_params(ids: list[str], spec: ViewSpec, segment: Segment,
                lm: LogMelParams) -> np.ndarray:
    """(len(ids), K, 3) float64: offset seconds (a whole number of log-mel hops), gain dB and
    seed of every view of every item."""
    out = np.zeros((len(ids), spec.k, len(PARAMS)), dtype=np.float64)
    top = max_offset_hops(spec, segment, lm)
    hop_seconds = lm.hop_length / lm.sample_rate
    for i, item_id in enumerate(ids):
        for v in range(spec.k):
            seed = view_seed(spec.seed, item_id, v)
            rng = np.random.default_rng(seed)
            hops = int(rng.integers(0, top + 1))
            gain = float(rng.uniform(-spec.gain_db, spec.gain_db)) if spec.gain_db else 0.0
            out[i, v] = (hops * hop_seconds, gain, seed)
    return out


def offset_hops(offset_seconds: np.ndarray, lm: LogMelParams) -> np.ndarray:
    """Stored offsets (seconds) back to whole log-mel hops."""
    return np.rint(np.asarray(offset_seconds) * lm.sample_rate / lm.hop_length).astype(np.int64)


def crop_views(wave: torch.Tensor, params: np.ndarray, sample_rate: int,
               length: int) -> torch.Tensor:
    """(B, S) segment waves -> (B, K, length) views: each cut at its offset (rounded to the
    nearest sample at ``sample_rate``; exact when a hop is a whole number of samples there),
    zero past the segment's end, and scaled by its gain."""
    starts = torch.as_tensor(np.rint(params[..., OFFSET] * sample_rate).astype(np.int64),
                             device=wave.device)
    gains = torch.as_tensor(10.0 ** (params[..., GAIN] / 20.0), dtype=wave.dtype,
                            device=wave.device)
    idx = starts[..., None] + torch.arange(length, device=wave.device)  # (B, K, L)
    keep = idx < wave.shape[1]
    src = wave[:, None, :].expand(-1, params.shape[1], -1)
    got = torch.gather(src, 2, idx.clamp(max=wave.shape[1] - 1)) * keep
    return got * gains[..., None]


def log_gain(gain_db: np.ndarray | float) -> np.ndarray:
    """The gain in dB as an offset of a natural-log power spectrogram: ``ln(10**(g/10))``.
    Exact where the mel power is far above the log floor (``log_offset``): there
    ``log(a*P + eps)`` differs from ``log(P + eps) + log(a)``."""
    return np.asarray(gain_db, dtype=np.float64) * math.log(10.0) / 10.0
