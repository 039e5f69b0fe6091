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
    ``frame_rate`` is frames per second of ``frames`` (None for clip-only teachers).
    ``options`` are the teacher's own settings (e.g. hop), recorded in provenance.
    """

    name: str
    model: torch.nn.Module
    sample_rate: int
    embedding_dim: int
    weights_sha256: str
    frame_rate: float | None = None
    pooling: str = "mean over frames"
    options: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self, wave: torch.Tensor) -> TeacherOutput:
        return self.model(wave)


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
