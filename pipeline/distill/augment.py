"""Student-side augmentation: SpecAugment-style masks on the student's log-mel input, and mixup.

``distill --spec-augment`` masks, per training item, ``freq_masks`` bands of mel bins of
width 0..``freq_width`` and ``time_masks`` spans of frames of width
0..``time_fraction`` x frames (Park et al., 2019, without time warping), at uniformly drawn
positions. A masked value is set to the training mean of its mel bin, i.e. to 0 in the
student's *normalised* input (the student subtracts that mean and divides by the std first).
The teacher's targets stay as they are: the student learns to match them from a masked view.
``distill --mixup A`` mixes each training batch with a permutation of itself (Zhang et al.,
2018): ``x' = m x_i + (1 - m) x_j`` with one ``m ~ Beta(A, A)`` per step, labelled rows paired
with labelled rows and unlabelled with unlabelled. A mixed pair's KD target is the same mix of
the two targets, ``m t_i + (1 - m) t_j`` (an assumption: the teacher's output for the mixed
input is not known), and its task loss the same mix of the two items' losses. The mix is of
log-mel frames (of the student's input), not of waveforms.

The draws of both come from a generator seeded each epoch from the run's sampling generator,
so a run and its ``--resume`` draw the same masks and pairs. Validation, test, ``evaluate``
and ``predict`` never augment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from eastkd.errors import EastkdError


@dataclass(frozen=True)
class SpecAugment:
    """Mask counts and widths (the defaults are ``--spec-augment``'s)."""

    freq_masks: int = 2
    freq_width: int = 8  # mel bins, at most
    time_masks: int = 2
    time_fraction: float = 0.1  # of the frames, at most

    def __post_init__(self) -> None:
        if min(self.freq_masks, self.freq_width, self.time_masks) < 0 or \
                not 0.0 <= self.time_fraction <= 1.0:
            raise EastkdError(f"spec-augment {self.describe()}: counts and widths must be >= 0 "
                              "and the time fraction within 0..1")

    def describe(self) -> str:
        return (f"{self.freq_masks} freq masks of <= {self.freq_width} bins, {self.time_masks} "
                f"time masks of <= {self.time_fraction:g} of the frames")

    def config(self) -> dict[str, Any]:
        """What the run's config records."""
        return asdict(self)

    def mask(self, batch: int, n_mels: int, n_frames: int,
             gen: torch.Generator) -> torch.Tensor:
        """A (batch, n_mels, n_frames) bool mask, True where the input is masked."""
        f = _spans(batch, self.freq_masks, min(self.freq_width, n_mels), n_mels, gen)
        t = _spans(batch, self.time_masks, int(self.time_fraction * n_frames), n_frames, gen)
        return f[:, :, None] | t[:, None, :]

    def __call__(self, x: torch.Tensor, fill: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
        """``x`` (B, n_mels, T) with its masked cells set to ``fill`` (n_mels,) per bin."""
        m = self.mask(x.shape[0], x.shape[1], x.shape[2], gen).to(x.device)
        return torch.where(m, fill.to(x.device, x.dtype)[None, :, None], x)


def _spans(batch: int, count: int, max_width: int, size: int,
           gen: torch.Generator) -> torch.Tensor:
    """(batch, size) bool: per row, the union of ``count`` spans of width 0..max_width placed
    uniformly inside ``size`` (CPU draws from ``gen``: the same on every device)."""
    out = torch.zeros(batch, size, dtype=torch.bool)
    if count == 0 or max_width == 0 or size == 0:
        return out
    width = (torch.rand(batch, count, generator=gen) * (max_width + 1)).long()
    start = (torch.rand(batch, count, generator=gen) * (size - width + 1)).long()
    pos = torch.arange(size)
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return out | inside.any(dim=1)


@dataclass(frozen=True)
class Mix:
    """One step's mixup: the weight ``m`` and the partner of each row."""

    weight: float
    partner: torch.Tensor

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``m v + (1 - m) v[partner]`` (inputs, or targets: the same mix)."""
        return self.weight * v + (1.0 - self.weight) * v[self.partner.to(v.device)]

    def loss(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The same mix of the losses towards each row's label and its partner's (the partners
        of the first ``len(y)`` rows, the labelled ones, are labelled rows)."""
        other = y[self.partner[:len(y)].to(y.device)]
        return self.weight * fn(logits, y) + (1.0 - self.weight) * fn(logits, other)


@dataclass(frozen=True)
class Mixup:
    """Mixup with ``m ~ Beta(alpha, alpha)``."""

    alpha: float = 0.4

    def draw(self, n_labelled: int, n_rows: int, gen: torch.Generator) -> Mix:
        """A weight and partners: a permutation of the labelled rows ``0..n_labelled-1`` and
        one of the other (unlabelled) rows, so labels are only mixed with labels."""
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        weight = float(np.random.default_rng(seed).beta(self.alpha, self.alpha))
        partner = torch.cat([torch.randperm(n_labelled, generator=gen),
                             n_labelled + torch.randperm(n_rows - n_labelled, generator=gen)])
        return Mix(weight, partner)
