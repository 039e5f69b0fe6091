"""What a teacher is to eastkd: a frozen model from waveforms to embeddings.

A teacher declares the sample rate it expects, the size of its embedding, whether it yields
frame-level embeddings (and at which rate), and a fingerprint of its weights, which goes into
the store's provenance so that embeddings from different weights are never mixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


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
        return self.model(wave)


def float32_front_end(device: torch.device) -> torch.autocast:
    """Autocast switched off on ``device``: a teacher's front end (spectrogram, mel, log,
    normalisation) runs in float32 under it even when extract runs the model in float16."""
    return torch.autocast(device.type, enabled=False)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
