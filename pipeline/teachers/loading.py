"""Find a teacher by name: a registered one, or ``python:MODULE:CALLABLE`` for a user's own model.

A user's callable is called with the ``--teacher-opt`` options and returns either a
:class:`Teacher`, or a ``torch.nn.Module`` with a ``sample_rate`` attribute whose forward maps a
(B, S) waveform to (B, D) clip embeddings, (B, T, D) frame embeddings (mean-pooled to a clip
embedding) or a :class:`TeacherOutput`. Optional attributes: ``frame_rate`` (frames per second
of (B, T, D) outputs), ``min_seconds`` (shortest input it accepts; shorter inputs are zero-padded
to it). The module is probed once, by extract, on silence of the real segment length. The
README's "Bring your own teacher" section is the contract in one place.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

import torch

from eastkd.errors import EastkdError
from eastkd.pipeline.core import registry
from eastkd.pipeline.teachers.base import Teacher, TeacherOutput, state_dict_sha256

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


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
    """Wrap a plain module as a Teacher. Its embedding size is learnt by :meth:`Teacher.probe`
    on an input of the real segment length (extract does that before writing anything)."""
    sr = getattr(module, "sample_rate", None)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        raise EastkdError(f"teacher {name!r}: the module needs an integer `sample_rate` attribute")
    min_seconds = getattr(module, "min_seconds", 0.0)
    if not isinstance(min_seconds, (int, float)) or min_seconds < 0:
        raise EastkdError(f"teacher {name!r}: `min_seconds` must be a number >= 0, got "
                          f"{min_seconds!r}")
    frame_rate = getattr(module, "frame_rate", None)
    return Teacher(name=name, model=_ModuleTeacher(module).eval(), sample_rate=sr,
                   embedding_dim=0, weights_sha256=state_dict_sha256(module),
                   frame_rate=float(frame_rate) if frame_rate else None,
                   options=dict(options), min_seconds=float(min_seconds))


def default_key(teacher: str) -> str:
    """The embeddings key a teacher's output is stored under when ``--key`` is not given: the
    registered name, or the callable's name for ``python:MODULE:CALLABLE``."""
    return teacher.rsplit(":", 1)[-1] if teacher.startswith("python:") else teacher


def check_key(key: str) -> str:
    """``key`` if it is usable as a store path component, else a one-line error."""
    if not _KEY.match(key):
        raise EastkdError(f"embeddings key {key!r}: use letters, digits and . _ + - only "
                          "(starting with a letter or digit); choose one with --key")
    return key


OWN_TEACHER = "python:MODULE:CALLABLE"


def check_teacher_name(name: str) -> str:
    """``name`` if it names a teacher (registered, or ``python:MODULE:CALLABLE``), else a
    one-line error listing the valid names; cheap (imports nothing), so callers check it
    before any work."""
    if name.startswith("python:"):
        if len(name.split(":")) != 3 or not all(name.split(":")[1:]):
            raise EastkdError(f"teacher {name!r}: expected {OWN_TEACHER}")
        return name
    names = registry.teachers.names()
    if name not in names:
        raise EastkdError(f"unknown teacher {name!r}; choose one of: {', '.join(names)}, or "
                          f"{OWN_TEACHER} for your own torch.nn.Module")
    return name


def load_teacher(name: str, options: dict[str, Any] | None = None) -> Teacher:
    """The teacher called ``name`` built with ``options`` (see module docstring)."""
    options = dict(options or {})
    check_teacher_name(name)
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
