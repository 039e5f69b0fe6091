"""What a compress run is asked to do: :class:`CompressOptions`, checked once, here.

The CLI builds it from its flags, the Python API from arguments (``eastkd.compress("my.zarr",
"crepe-tiny", "pca", 32, name="pca32")``). The methods are the names in the compressor
registry (entry-point group ``eastkd.compressors``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.core import registry
from eastkd.progress import Progress

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def compress_methods() -> list[str]:
    """The ``--method`` choices: every registered compressor."""
    return registry.compressors.names()


def parse_dim(text: str | int | float) -> int | float:
    """``64`` or ``"64"`` -> 64 components; ``0.95`` -> keep 95 % of the variance (PCA)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise EastkdError(f"--dim {text!r}: expected a whole number of dimensions or a "
                          "fraction of variance in (0, 1), e.g. 128 or 0.95") from None
    if not math.isfinite(value) or value <= 0:
        raise EastkdError(f"--dim {text!r}: must be positive")
    if value.is_integer():
        return int(value)
    if value < 1:
        return value
    raise EastkdError(f"--dim {text!r}: a dimension must be a whole number")


def default_name(key: str, method: str, dim: int | float) -> str:
    return f"{key}-{method}{dim}"


@dataclass
class CompressOptions:
    """Every option of a compress run (``eastkd compress --help`` explains each).

    ``embeddings`` None takes the store's only embeddings; ``name`` None is
    ``<key>-<method><dim>``; ``plot`` is a PNG path, None for ``<store>.<name>.png`` beside the
    store, or False for none; ``dask`` (``local:N``, a scheduler address or a Client) fits PCA
    on that cluster. ``seed``, ``epochs`` and ``patience`` are for trained compressors.
    """

    method: str = "pca"
    dim: int | float = 128
    embeddings: str | None = None
    name: str | None = None
    fit_split: str = "train"
    fold: int | None = None
    whiten: bool = False
    seed: int = 0
    epochs: int = 100
    patience: int = 10
    overwrite: bool = False
    plot: str | None | bool = None
    progress: Progress = False  # None: bars on a terminal, else plain lines (the CLI's)
    dask: Any = None

    def check(self) -> None:
        """Reject values a run cannot use (one line each); ``dim`` becomes a number."""
        if self.method not in compress_methods():
            raise EastkdError(f"unknown compressor {self.method!r}; choose one of: "
                              f"{', '.join(compress_methods())}")
        self.dim = parse_dim(self.dim)
        if self.dask is not None and self.method != "pca":
            raise EastkdError(f"--dask fits --method pca only, not {self.method!r}; drop --dask")
        if self.name is not None and not _NAME.match(self.name):
            raise EastkdError(f"--name {self.name!r}: use letters, digits and . _ + - only")
