"""eastkd: an offline embedding cache and feature store for teacher-to-student knowledge
distillation in audio.

The Python API mirrors the command line; every name is imported lazily, so ``import eastkd``
stays fast and loads neither torch nor zarr::

    import eastkd

    eastkd.__version__
    eastkd.extract("data/manifest.csv", "my.zarr", eastkd.ExtractOptions(teacher="crepe-tiny"))
    eastkd.probe("my.zarr").probes                   # the teacher's linear probe
    eastkd.compress("my.zarr", "crepe-tiny", "pca", 32, name="pca32")
    result = eastkd.distill("my.zarr", "pca32", "runs/pca32-dc", kd="dc")
    scores = eastkd.evaluate("runs/pca32-dc", "my.zarr")
    preds = eastkd.predict("runs/pca32-dc", ["new.wav"])
    eastkd.export("runs/pca32-dc", "onnx")
    table = eastkd.runs_table("runs")

    with eastkd.open_store("my.zarr") as store:
        x = store.features("logmel").array("values")   # a lazy array: x[:10] is numpy
        d = x.to_dask()                                  # a dask array over the chunks
        y = store.items.labels                           # items x classes, numpy
        ds = store.to_xarray("embeddings/crepe-tiny")    # xarray; item, label, split coords

Every stage is quiet unless asked: ``progress=False`` is the default of the Python API;
``progress=None`` behaves as the command line (tqdm bars on a terminal, else a plain line every
10 % or 30 s, see :mod:`eastkd.progress`) and ``progress=True`` forces bars.

The stage functions are those behind the commands (their docstrings give every option); the
modules they live in are listed in ``_EXPORTS``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # the store
    "open_store": ("eastkd.store", "open_store"),
    "create_store": ("eastkd.store", "create_store"),
    "Store": ("eastkd.store", "Store"),
    "EastkdError": ("eastkd.errors", "EastkdError"),
    # the stages
    "extract": ("eastkd.pipeline.extract", "extract"),
    "ExtractOptions": ("eastkd.pipeline.extract", "ExtractOptions"),
    "probe": ("eastkd.pipeline.probe.run", "probe"),
    "compress": ("eastkd.pipeline.compress.run", "compress"),
    "distill": ("eastkd.pipeline.distill.train", "distill"),
    "evaluate": ("eastkd.pipeline.distill.evaluate", "evaluate"),
    "predict": ("eastkd.pipeline.runs.predict", "predict"),
    "Predictor": ("eastkd.pipeline.runs.predict", "Predictor"),
    "export": ("eastkd.pipeline.runs.export", "export"),
    "runs_table": ("eastkd.pipeline.runs.table", "runs_table"),
    # datasets and settings
    "resolve_dataset": ("eastkd.pipeline.datasets.manifest", "resolve_dataset"),
    "LogMelParams": ("eastkd.pipeline.core.features", "LogMelParams"),
    "read_student_inputs": ("eastkd.pipeline.runs.like", "read_student_inputs"),
}

__all__ = ["__version__", *_EXPORTS]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eastkd")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'eastkd' has no attribute {name!r}")
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
