"""Audio decoding for extraction: bytes -> mono float32 at the rates the models need.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...); resampling through
torchaudio. Every failure becomes an :class:`AudioError` whose message names the problem, so
that extraction can report or skip the item.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

CROP_POLICIES = ("start", "center")
# libsndfile's header log for a WAV whose data chunk is shorter than its header says
_WAV_TRUNCATED = re.compile(r"^data\s*: (?P<declared>\d+) \(should be (?P<held>\d+)\)", re.M)
_STREAMING_SIZE = 0x7FFF0000  # writers that cannot seek put placeholder sizes >= this


class AudioError(Exception):
    """An item's audio cannot be used; the message says why."""


@dataclass(frozen=True)
class Segment:
    """Every clip is cropped or zero-padded to ``seconds``; ``crop`` says where to cut."""

    seconds: float
    crop: str = "start"

    def samples(self, sample_rate: int) -> int:
        return int(round(self.seconds * sample_rate))

    def as_dict(self) -> dict[str, object]:
        return {"seconds": self.seconds, "crop": self.crop, "pad": "zeros at the end"}


def read_bytes(path: str) -> tuple[bytes, str]:
    """The file's bytes and their sha256."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise AudioError("file not found") from e
    except OSError as e:
        raise AudioError(f"unreadable file ({e.strerror or e})") from e
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the file's sample rate."""
    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            cut = _WAV_TRUNCATED.search(f.extra_info)
            wav, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        # drop soundfile's "Error opening <_io.BytesIO object at 0x...>: ": the reason is
        # stored per item and must not change from run to run
        reason = re.sub(r"^Error opening <[^>]*>: ", "", str(e).splitlines()[0])
        raise AudioError(f"not decodable audio ({reason[:120]})") from e
    if cut and int(cut["held"]) < int(cut["declared"]) < _STREAMING_SIZE:
        # libsndfile silently reads what is there; a cut-off download would be zero-padded
        raise AudioError(f"truncated file (header declares {cut['declared']} bytes of audio "
                         f"data, the file holds {cut['held']})")
    if wav.shape[0] == 0:
        raise AudioError("audio has no samples")
    mono = wav.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or infinite samples")
    return mono, int(sr)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(wave))
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    return AF.resample(x, orig_sr // g, new_sr // g)


def fit_segment(wave: torch.Tensor, n: int, crop: str) -> torch.Tensor:
    """Crop (at the start or centre) or zero-pad at the end to exactly ``n`` samples."""
    if wave.shape[-1] >= n:
        start = 0 if crop == "start" else (wave.shape[-1] - n) // 2
        return wave[..., start:start + n]
    return torch.nn.functional.pad(wave, (0, n - wave.shape[-1]))


def duration_seconds(path: str) -> float:
    """Duration from the file header; NaN if the header cannot be read."""
    try:
        info = sf.info(path)
        return float(info.frames) / float(info.samplerate) if info.samplerate else float("nan")
    except Exception:
        return float("nan")
