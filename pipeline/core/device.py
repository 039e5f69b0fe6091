"""Choosing the torch device from ``--device auto|cpu|cuda``."""

from __future__ import annotations

import torch

from eastkd.errors import EastkdError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EastkdError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EastkdError(f"--device {name!r}: expected one of {', '.join(DEVICES)}") from None
