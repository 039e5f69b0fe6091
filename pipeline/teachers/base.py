"""What a teacher is to eastkd: a frozen model from waveforms to embeddings.

A teacher declares the sample rate it expects, the size of its embedding, whether it yields
frame-level embeddings (and at which rate), the shortest input it accepts, and a fingerprint of
its weights, which goes into the store's provenance so that embeddings from different weights
are never mixed. The whole contract, for users wrapping their own model, is in the README
("Bring your own teacher").
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from eastkd.errors import EastkdError


@dataclass
class TeacherOutput:
    """Embeddings of one batch: ``clip`` is (B, D); ``frames`` is (B, T, D) or None."""

    clip: torch.Tensor
    frames: torch.Tensor | None = None


@dataclass
class Teacher:
    """A frozen embedding model and the facts the store records about it.

    ``model`` maps a (B, S) float32 waveform batch at ``sample_rate`` to a :class:`TeacherOutput`.
    ``frame_rate`` is frames per second of ``frames`` (None for clip-only teachers) and
    ``frame_offset`` the centre in seconds of the first frame, so frame ``i`` is centred at
    ``frame_offset + i / frame_rate`` (extract records both; distill aligns targets by them).
    ``autocast_safe`` declares that the model may run under float16 autocast on CUDA (its front
    end stays float32 either way); extract uses mixed precision only for such teachers.
    ``options`` are the teacher's own settings (e.g. hop), recorded in provenance.
    ``min_seconds`` is the shortest input the model accepts: shorter inputs (a ``--segment``
    below it) are zero-padded at the end to that length before the forward pass.
    ``embedding_dim`` may be 0 for a wrapped module until :meth:`probe` has run it once.
    ``weights_files`` are the files the weights were read from (none for weights built in
    code): extract records their size and modification time, so that a rerun on a finished
    store can tell the teacher is unchanged without loading it.
    """

    name: str
    model: torch.nn.Module
    sample_rate: int
    embedding_dim: int
    weights_sha256: str
    frame_rate: float | None = None
    frame_offset: float = 0.0
    autocast_safe: bool = False
    pooling: str = "mean over frames"
    options: dict[str, Any] = field(default_factory=dict)
    min_seconds: float = 0.0
    weights_files: tuple[str, ...] = ()

    @property
    def min_samples(self) -> int:
        return int(math.ceil(self.min_seconds * self.sample_rate))

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self

    def autocast_on(self, device: torch.device) -> bool:
        """Whether extract runs this teacher under float16 autocast on ``device``."""
        return device.type == "cuda" and self.autocast_safe

    def set_frames(self, on: bool) -> None:
        """Ask for frame embeddings or not; a model with a boolean ``frames`` attribute (PaSST)
        then computes them only when asked (extract calls this with ``--frames``)."""
        if isinstance(getattr(self.model, "frames", None), bool):
            self.model.frames = bool(on)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self, wave: torch.Tensor) -> TeacherOutput:
        short = self.min_samples - wave.shape[-1]
        if short > 0:
            wave = torch.nn.functional.pad(wave, (0, short))
        return self.model(wave)

    def probe(self, n_samples: int, device: torch.device | str = "cpu") -> TeacherOutput:
        """Run the teacher once on silence of the real input length (``n_samples``, i.e. the
        segment) and record what it returns: the embedding size, and for wrapped modules
        whether it yields frames. Extract calls this before creating the store's arrays."""
        try:
            with torch.inference_mode():
                out = self(torch.zeros(1, n_samples, device=device))
        except Exception as e:  # noqa: BLE001 - any failure of a user's model gets one line
            raise EastkdError(
                f"teacher {self.name!r} failed on a {n_samples / self.sample_rate:g} s probe "
                f"input ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); if it "
                "needs longer inputs, give it a `min_seconds` attribute or a longer --segment"
            ) from e
        if not isinstance(out, TeacherOutput) or out.clip.dim() != 2:
            raise EastkdError(f"teacher {self.name!r} returned {type(out).__name__}; expected "
                              "TeacherOutput with (B, D) clip embeddings")
        self.embedding_dim = int(out.clip.shape[-1])
        if out.frames is None:
            self.frame_rate = None
        return out


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of any tensor: every shape (0-dim included) and dtype (bool, complex,
    bfloat16, quantized, ...), dense or sparse, on any device."""
    t = tensor.detach()
    if t.is_quantized:
        t = t.int_repr()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def float32_front_end(device: torch.device) -> torch.autocast:
    """Autocast switched off on ``device``: a teacher's front end (spectrogram, mel, log,
    normalisation) runs in float32 under it even when extract runs the model in float16."""
    return torch.autocast(device.type, enabled=False)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        if not isinstance(value, torch.Tensor):  # extra state a module may put in its dict
            h.update(repr(value).encode())
            continue
        h.update(str(tuple(value.shape)).encode())
        h.update(str(value.dtype).encode())
        h.update(tensor_bytes(value))
    return h.hexdigest()


def file_sha256(path: str, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
