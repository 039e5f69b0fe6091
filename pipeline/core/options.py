"""What the stages' options objects share (``ExtractOptions``, ``CompressOptions``,
``DistillOptions``): building one from keyword arguments, as the Python API does."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from eastkd.errors import EastkdError

O = TypeVar("O")


def options_from_kwargs(cls: type[O], stage: str, kwargs: dict[str, Any]) -> O:
    """``cls(**kwargs)``, with a one-line error naming an unknown option and the known ones."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise EastkdError(f"unknown {stage} option(s): {', '.join(unknown)}; "
                          f"choose from {', '.join(sorted(known))}")
    return cls(**kwargs)
