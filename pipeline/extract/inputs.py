"""The input pipeline: files -> teacher waveforms and student log-mel, batched.

DataLoader workers decode each clip once, straight from its path and only the samples the
segment needs (at the file's own rate), into a zero-padded batch. :class:`FrontEnd` then
resamples the batch to the teacher's rate and to the student's, cuts the segment and computes
the log-mel, all batched and in float32 on the teacher's device (on a CPU-only run with workers,
in the workers, where it overlaps the teacher).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchaudio

from eastkd.pipeline.core.audio import (
    AudioError,
    decode_window,
    file_sha256,
    filter_reach,
    resampled_length,
    resampler_kwargs,
)
from eastkd.pipeline.core.features import LogMel, LogMelParams
from eastkd.pipeline.extract.plan import Batch

META = ("length", "rate", "offset", "total")  # per-row facts of a decoded batch
CHANGED = "file changed since the store was created (sha256 differs; --rehash re-extracts it)"


@dataclass(frozen=True)
class Target:
    """One rate the batch is needed at: ``samples`` of the segment at ``sample_rate``."""

    sample_rate: int
    samples: int


@dataclass(frozen=True)
class FileRef:
    """What a worker needs to read item ``i`` and to know it is the file the store indexed."""

    path: str
    sha256: str
    size: int  # -1: unknown (hash to check)
    mtime_ns: int


def target_window(total: int, sr: int, targets: list[Target], crop: str, resampler: str,
                  ) -> tuple[int, int]:
    """``[start, stop)`` input samples that determine the segment at every target rate exactly
    as if the whole file were resampled. ``start`` is a multiple of every rate ratio's input
    period, so that it maps to a whole output sample at each rate."""
    lo, hi, step = total, 0, 1
    for t in targets:
        g = math.gcd(sr, t.sample_rate)
        step = step * (sr // g) // math.gcd(step, sr // g)
        first = crop_start(resampled_length(total, sr, t.sample_rate), t.samples, crop)
        reach = filter_reach(sr, t.sample_rate, resampler)
        lo = min(lo, math.floor(first * sr / t.sample_rate) - reach)
        hi = max(hi, math.ceil((first + t.samples) * sr / t.sample_rate) + reach)
    start = max(0, lo) // step * step
    return start, min(total, max(hi, start))


def crop_start(length: int, samples: int, crop: str) -> int:
    """First sample of the segment in a signal of ``length`` samples."""
    return 0 if crop == "start" or length <= samples else (length - samples) // 2


class ClipBatches(torch.utils.data.Dataset):
    """Batch ``b`` of the plan, decoded: runs in DataLoader workers (no store handles).

    Each item is a dict with ``wave`` (k, W) float32 zero-padded windows at the files' rates,
    lists ``length``, ``rate``, ``offset`` (window start) and ``total`` (file length) with one
    value per row, and ``errors`` (one reason per row, "" if fine). With a ``front_end`` (CPU
    runs) the batch is turned into ``teacher``/``logmel`` tensors here, in the worker, and
    ``wave`` is dropped.
    """

    def __init__(self, files: list[FileRef], batches: list[Batch], targets: list[Target],
                 crop: str, resampler: str, front_end: "FrontEnd | None" = None) -> None:
        self.files, self.batches, self.targets = files, batches, targets
        self.crop, self.resampler = crop, resampler
        self.front_end = front_end

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> dict[str, Any]:
        batch = self.batches[b]
        k = batch.stop - batch.start
        waves: list[np.ndarray] = [np.zeros(0, np.float32)] * k
        meta = np.zeros((k, 4), dtype=np.int64)  # length, rate, offset, total
        errors = [""] * k
        for j in range(k):
            try:
                waves[j], meta[j] = self._read(self.files[batch.start + j], batch.unit.features)
            except AudioError as e:
                errors[j] = str(e)
        width = max(1, max(len(w) for w in waves))
        wave = torch.zeros(k, width)
        for j, w in enumerate(waves):
            wave[j, :len(w)] = torch.from_numpy(w)
        out = {"wave": wave, "errors": errors, "batch": b,
               **{name: meta[:, i].tolist() for i, name in enumerate(META)}}
        if self.front_end is not None:  # only the results travel back to the main process
            out.update(self.front_end(out, batch.unit.features))
            del out["wave"]
        return out

    def _read(self, ref: FileRef, features: bool) -> tuple[np.ndarray, np.ndarray]:
        _check_unchanged(ref)
        targets = self.targets if features else self.targets[:1]
        span: list[tuple[int, int]] = []

        def window(total: int, sr: int) -> tuple[int, int]:
            span.append(target_window(total, sr, targets, self.crop, self.resampler))
            return span[0]

        mono, sr, total = decode_window(ref.path, window)
        return mono, np.array([len(mono), sr, span[0][0], total], dtype=np.int64)


def _check_unchanged(ref: FileRef) -> None:
    """An :class:`AudioError` if the file is not the one the store indexed: size and mtime as
    recorded mean unchanged; otherwise its bytes are hashed and compared."""
    try:
        st = os.stat(ref.path)
    except FileNotFoundError as e:
        raise AudioError("file not found") from e
    except OSError as e:
        raise AudioError(f"unreadable file ({e.strerror or e})") from e
    if st.st_size == ref.size and st.st_mtime_ns == ref.mtime_ns:
        return
    if file_sha256(ref.path) != ref.sha256:
        raise AudioError(CHANGED)


class FrontEnd:
    """Decoded batch -> (teacher waves, log-mel), on one device, float32.

    Resampling uses one cached torchaudio ``Resample`` per (file rate, target rate); rows of
    different file rates are resampled in groups. Each row's segment is then gathered from its
    window (the crop) and everything past the file's end is zeroed (the pad), which equals
    resampling the whole file and cutting it.
    """

    def __init__(self, targets: list[Target], crop: str, resampler: str, logmel: LogMelParams,
                 device: torch.device) -> None:
        self.targets, self.crop, self.resampler = targets, crop, resampler
        self.device = device
        self.logmel = LogMel(logmel).to(device)
        self._resamplers: dict[tuple[int, int], torch.nn.Module] = {}

    def __call__(self, batch: dict[str, Any], features: bool) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        wave = batch["wave"].to(self.device, non_blocking=nb)
        meta = {k: batch[k] for k in META}
        with torch.inference_mode():
            out = {"teacher": self._at(wave, meta, self.targets[0])}
            if features:
                out["logmel"] = self.logmel(self._at(wave, meta, self.targets[1]))
        return out

    def _at(self, wave: torch.Tensor, meta: dict[str, list[int]], t: Target) -> torch.Tensor:
        k = wave.shape[0]
        out = torch.zeros(k, t.samples, device=wave.device)
        for rate in sorted(set(meta["rate"])):
            rows = [j for j in range(k) if meta["rate"][j] == rate and meta["length"][j] > 0]
            if not rows:
                continue
            width = max(meta["length"][j] for j in rows)
            rows_t = to_device(rows, wave.device)
            res = self._resample(wave.index_select(0, rows_t)[:, :width], rate, t.sample_rate)
            # per row: where the segment starts in the resampled window, and where the file ends
            shift = [meta["offset"][j] * t.sample_rate // rate for j in rows]
            full = [resampled_length(meta["total"][j], rate, t.sample_rate) for j in rows]
            first = to_device([crop_start(n, t.samples, self.crop) - s
                               for n, s in zip(full, shift)], wave.device)
            valid = to_device([n - s for n, s in zip(full, shift)], wave.device)
            idx = first[:, None] + torch.arange(t.samples, device=wave.device)
            keep = (idx < valid[:, None]) & (idx < res.shape[1])
            got = torch.gather(res, 1, idx.clamp(max=res.shape[1] - 1)) * keep
            out.index_copy_(0, rows_t, got)
        return out

    def _resample(self, x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
        if orig == new:
            return x
        key = (orig, new)
        if key not in self._resamplers:
            g = math.gcd(orig, new)
            self._resamplers[key] = torchaudio.transforms.Resample(
                orig // g, new // g, **resampler_kwargs(self.resampler)).to(x.device)
        return self._resamplers[key](x)


def to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A small int64 index tensor on ``device`` without a host synchronisation (pinned source,
    non-blocking copy on CUDA)."""
    t = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
