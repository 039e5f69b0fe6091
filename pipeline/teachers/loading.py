"""Find a teacher by name: a registered one, or ``python:MODULE:CALLABLE`` for a user's own model.

A user's callable is called with the ``--teacher-opt`` options and returns either a
:class:`Teacher`, or a ``torch.nn.Module`` with a ``sample_rate`` attribute whose forward maps a
(B, S) waveform to (B, D) clip embeddings, (B, T, D) frame embeddings (mean-pooled to a clip
embedding) or a :class:`TeacherOutput`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import torch

from eastkd.pipeline import registry
from eastkd.pipeline.teachers.base import Teacher, TeacherOutput, state_dict_sha256
from eastkd.store import EastkdError


class _ModuleTeacher(torch.nn.Module):
    """Adapts a user's module with a plain tensor output to :class:`TeacherOutput`."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, wave: torch.Tensor) -> TeacherOutput:
        out = self.module(wave)
        if isinstance(out, TeacherOutput):
            return out
        if out.dim() == 2:
            return TeacherOutput(clip=out)
        if out.dim() == 3:
            return TeacherOutput(clip=out.mean(dim=1), frames=out)
        raise EastkdError(
            f"teacher output has shape {tuple(out.shape)}; expected (B, D) or (B, T, D)")


def _import_callable(spec: str) -> Any:
    try:
        _, module_name, attr = spec.split(":", 2)
    except ValueError:
        raise EastkdError(f"teacher {spec!r}: expected python:MODULE:CALLABLE") from None
    if "" not in sys.path:
        sys.path.insert(0, "")  # let users point at a module in the working directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EastkdError(f"teacher {spec!r}: cannot import {module_name!r} ({e})") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise EastkdError(f"teacher {spec!r}: module {module_name!r} has no {attr!r}") from None


def from_module(name: str, module: torch.nn.Module, options: dict[str, Any]) -> Teacher:
    """Wrap a plain module as a Teacher, probing it once for its embedding size."""
    sr = getattr(module, "sample_rate", None)
    if not isinstance(sr, int) or sr <= 0:
        raise EastkdError(f"teacher {name!r}: the module needs an integer `sample_rate` attribute")
    model = _ModuleTeacher(module).eval()
    with torch.inference_mode():
        probe = model(torch.zeros(1, sr))
    frame_rate = getattr(module, "frame_rate", None)
    return Teacher(name=name, model=model, sample_rate=sr,
                   embedding_dim=int(probe.clip.shape[-1]),
                   weights_sha256=state_dict_sha256(module),
                   frame_rate=frame_rate if probe.frames is not None else None,
                   options=dict(options))


def load_teacher(name: str, options: dict[str, Any] | None = None) -> Teacher:
    """The teacher called ``name`` built with ``options`` (see module docstring)."""
    options = dict(options or {})
    if name.startswith("python:"):
        factory = _import_callable(name)
    else:
        factory = registry.teachers.get(name)
    try:
        obj = factory(**options)
    except TypeError as e:
        raise EastkdError(f"teacher {name!r}: bad --teacher-opt options {options} ({e})") from e
    if isinstance(obj, Teacher):
        return obj
    if isinstance(obj, torch.nn.Module):
        return from_module(name, obj, options)
    raise EastkdError(f"teacher {name!r} returned {type(obj).__name__}, not a Teacher or Module")
