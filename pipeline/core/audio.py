"""Audio decoding for extraction: files -> mono float32 at the rates the models need.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...), straight from the path
and only the part of the file a segment needs; resampling through torchaudio with a named
setting (:data:`RESAMPLERS`), batched on the teacher's device by ``pipeline/extract``. Every
failure becomes an :class:`AudioError` whose message names the problem, so that extraction can
report or skip the item.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

CROP_POLICIES = ("start", "center")
# libsndfile's header log for a WAV whose data chunk is shorter than its header says
_WAV_TRUNCATED = re.compile(r"^data\s*: (?P<declared>\d+) \(should be (?P<held>\d+)\)", re.M)
_STREAMING_SIZE = 0x7FFF0000  # writers that cannot seek put placeholder sizes >= this

# Named resampler settings (torchaudio.functional.resample keyword arguments). "kaiser-best" is
# librosa/resampy's "kaiser_best" windowed sinc (stopband >= 80 dB, see tests); "fast" is
# torchaudio's default (6 zero crossings, Hann window), what eastkd used before.
RESAMPLERS: dict[str, dict[str, Any]] = {
    "kaiser-best": {"resampling_method": "sinc_interp_kaiser", "lowpass_filter_width": 64,
                    "rolloff": 0.9475937167399596, "beta": 14.769656459379492},
    "fast": {"resampling_method": "sinc_interp_hann", "lowpass_filter_width": 6,
             "rolloff": 0.99},
}
DEFAULT_RESAMPLER = "kaiser-best"


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
    """Mono float32 samples and the file's sample rate, from the file's bytes."""
    if not data:
        raise AudioError("empty file (0 bytes)")
    mono, sr, _ = decode_window(io.BytesIO(data))
    return mono, sr


Window = tuple[int, int]  # [start, stop) in samples at the file's rate


def decode_window(source: Any, window: Any = None) -> tuple[np.ndarray, int, int]:
    """Mono float32 samples of part of a file, its sample rate and its total length.

    ``source`` is a path or a file object; ``window(total_frames, sample_rate)`` returns the
    ``[start, stop)`` frames to read (default: all), so that only what a segment needs is
    decoded, whatever the file's length.
    """
    if isinstance(source, str):
        _check_readable(source)
    try:
        with sf.SoundFile(source) as f:
            cut = _WAV_TRUNCATED.search(f.extra_info)
            total, sr = int(f.frames), int(f.samplerate)
            start, stop = window(total, sr) if window else (0, total)
            if start:
                f.seek(start)
            wav = f.read(max(0, stop - start), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        # drop soundfile's "Error opening <...>: ": the reason is stored per item and must not
        # change from run to run (or name a temporary object)
        reason = re.sub(r"^Error opening (<[^>]*>|'.*?'|\S+): ", "", str(e).splitlines()[0])
        raise AudioError(f"not decodable audio ({reason[:120]})") from e
    if cut and int(cut["held"]) < int(cut["declared"]) < _STREAMING_SIZE:
        # libsndfile silently reads what is there; a cut-off download would be zero-padded
        raise AudioError(f"truncated file (header declares {cut['declared']} bytes of audio "
                         f"data, the file holds {cut['held']})")
    if total == 0 or wav.shape[0] == 0 and stop > start:
        raise AudioError("audio has no samples")
    mono = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), sr, total


def _check_readable(path: str) -> None:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as e:
        raise AudioError("file not found") from e
    except OSError as e:
        raise AudioError(f"unreadable file ({e.strerror or e})") from e
    if size == 0:
        raise AudioError("empty file (0 bytes)")


def resampler_kwargs(name: str) -> dict[str, Any]:
    """torchaudio keyword arguments of a named resampler; a clear error for unknown names."""
    if name not in RESAMPLERS:
        raise AudioError(f"unknown resampler {name!r}; choose one of: {', '.join(RESAMPLERS)}")
    return dict(RESAMPLERS[name])


def resample(wave: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int,
             method: str = DEFAULT_RESAMPLER) -> torch.Tensor:
    """``wave`` (..., S) from ``orig_sr`` to ``new_sr`` with the named resampler."""
    x = wave if isinstance(wave, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(wave))
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    return AF.resample(x, orig_sr // g, new_sr // g, **resampler_kwargs(method))


def resampled_length(n: int, orig_sr: int, new_sr: int) -> int:
    """Samples torchaudio's resampler returns for ``n`` input samples."""
    if orig_sr == new_sr:
        return n
    g = math.gcd(orig_sr, new_sr)
    return -(-n * (new_sr // g) // (orig_sr // g))


def filter_reach(orig_sr: int, new_sr: int, method: str = DEFAULT_RESAMPLER) -> int:
    """Input samples on either side of an output sample that the resampling filter reads
    (torchaudio's kernel half-width, plus one period of the polyphase filter)."""
    if orig_sr == new_sr:
        return 0
    g = math.gcd(orig_sr, new_sr)
    o, n = orig_sr // g, new_sr // g
    kw = RESAMPLERS[method]
    return math.ceil(kw["lowpass_filter_width"] * o / (min(o, n) * kw["rolloff"])) + o + 1


def fit_segment(wave: torch.Tensor, n: int, crop: str) -> torch.Tensor:
    """Crop (at the start or centre) or zero-pad at the end to exactly ``n`` samples."""
    if wave.shape[-1] >= n:
        start = 0 if crop == "start" else (wave.shape[-1] - n) // 2
        return wave[..., start:start + n]
    return torch.nn.functional.pad(wave, (0, n - wave.shape[-1]))


def file_sha256(path: str, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (an :class:`AudioError` if unreadable)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                h.update(chunk)
    except FileNotFoundError as e:
        raise AudioError("file not found") from e
    except OSError as e:
        raise AudioError(f"unreadable file ({e.strerror or e})") from e
    return h.hexdigest()


def duration_seconds(path: str) -> float:
    """Duration from the file header; NaN if the header cannot be read."""
    try:
        info = sf.info(path)
        return float(info.frames) / float(info.samplerate) if info.samplerate else float("nan")
    except Exception:
        return float("nan")
