"""The small contract a storage backend fulfils for :class:`eastkd.store.Store`.

A backend stores named N-d arrays in nested groups, each array and group with JSON-able
attributes. Paths are ``/``-separated and relative to the store root (``"embeddings/crepe/clip"``).
Strings are variable-length UTF-8 in both backends.

A backend implements the twelve abstract members of :class:`Backend` (create a group or an
array, ``kind``, ``children``, ``info``, ``read``, ``write``, attributes, ``delete``, and the
chunk-level ``stored_chunks``/``reset_chunk``); existence tests, pending rows, write-failure
messages and bytes on disk are written once here. Capabilities (``concurrent_writers``,
``abandoned_files``) are asked instead of naming a backend.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np

from eastkd.store import location
from eastkd.store.damage import write_failure

# the status of a section's rows (docs/store-format.md, "Sections")
PENDING, OK, SKIPPED = 0, 1, 2


class ArrayInfo(NamedTuple):
    """What a backend knows of one stored array (fixed at creation)."""

    shape: tuple[int, ...]
    dtype: np.dtype  # ``object`` for strings
    chunks: tuple[int, ...]
    fill_value: Any
    checksummed: bool  # every chunk carries a checksum (format 2 numeric arrays)


class Backend(ABC):
    """One open store file or directory.

    The abstract members are the raw operations a backend must provide; what can be said
    once for every backend (existence, pending rows, write failures, bytes on disk) is
    written here above them.
    """

    name: str
    path: str
    read_only: bool
    # capabilities, asked instead of naming a backend:
    concurrent_writers: bool = False  # processes that own whole chunks may write at once

    @classmethod
    def abandoned_files(cls) -> bool:
        """Whether a failed write (a full disk) left file handles that would crash the
        process if flushed at exit (see :func:`eastkd.store.backends.must_exit_without_flush`)."""
        return False

    @classmethod
    def create(cls, path: str) -> "Backend":
        """A new, empty store at ``path`` (nothing there yet), open for writing."""
        return cls(path, "a")  # type: ignore[call-arg]

    @abstractmethod
    def create_array(
        self,
        path: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: Any,
        attrs: dict[str, Any] | None = None,
        data: np.ndarray | None = None,
        dims: tuple[str, ...] | None = None,
    ) -> None:
        """Create an array (compressed and checksummed; fill value NaN for floats, else 0 or
        ``""``) with dimension names ``dims``, and optionally write ``data`` into it."""

    @abstractmethod
    def create_group(self, path: str, attrs: dict[str, Any] | None = None) -> None:
        """Create a group (and its parents) with the given attributes."""

    @abstractmethod
    def kind(self, path: str) -> Literal["array", "group"] | None:
        """What is at ``path``: an array, a group, or nothing (None)."""

    def exists(self, path: str) -> bool:
        return self.kind(path) is not None

    def is_array(self, path: str) -> bool:
        return self.kind(path) == "array"

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """Names of the direct children (groups and arrays) of a group; [] if it does not exist."""

    @abstractmethod
    def info(self, path: str) -> ArrayInfo:
        """Shape, dtype, chunks, fill value and checksumming of the array at ``path``."""

    @abstractmethod
    def read(self, path: str, selection: Any = slice(None), allow_missing: bool = False
             ) -> np.ndarray:
        """Read a basic selection; strings come back as a numpy array of ``str`` objects.

        A chunk that fails its checksum or does not decode raises
        :class:`~eastkd.errors.StoreDamageError` naming its rows; so do rows of a
        NaN-fill array that read as fill (a missing chunk) unless ``allow_missing``."""

    @abstractmethod
    def write(self, path: str, selection: Any, value: np.ndarray) -> None: ...

    @abstractmethod
    def get_attrs(self, path: str = "") -> dict[str, Any]: ...

    @abstractmethod
    def update_attrs(self, path: str, attrs: dict[str, Any]) -> None: ...

    @abstractmethod
    def delete(self, path: str) -> None:
        """Delete an array or a group with everything under it."""

    def nbytes_stored(self) -> int:
        """Bytes the store occupies: under its URL, in its folder, or its file's size."""
        if location.is_url(self.path):
            return location.url_nbytes(self.path)
        if os.path.isdir(self.path):
            return _du(self.path)
        return os.path.getsize(self.path)

    @abstractmethod
    def stored_chunks(self, path: str) -> set[int] | None:
        """Indices (along items) of the chunks present on disk; None where it cannot tell."""

    @abstractmethod
    def reset_chunk(self, path: str, index: int) -> None:
        """Replace item-chunk ``index`` by the fill value without reading it (repair)."""

    def chunk_checks(self, paths: list[str], progress: Callable[[int], Any] = lambda n: None
                     ) -> dict[str, list[tuple[int, int, str]]]:
        """Check every stored chunk's checksum of the arrays at ``paths`` on its raw bytes,
        without decoding: for each array this backend can check so, ``(item-chunk index,
        bytes on disk, problem or "")`` per stored chunk; arrays it cannot check so (strings,
        format 1) are left out, and verify decodes them instead. ``progress(1)`` per chunk."""
        return {}

    def pending_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` of the array at ``path`` its section's ``status`` marks pending
        (never written yet); all False for arrays outside a section (no ``status`` beside
        them). Only called for rows that read as the fill value, so it costs nothing on reads
        of written data."""
        rows = np.asarray(rows, dtype=np.int64)
        parent, _, name = path.rpartition("/")
        status = f"{parent}/status"
        if not parent or name in ("status", "error") or not self.exists(status):
            return np.zeros(rows.size, dtype=bool)
        return self.read(status)[rows] == PENDING

    @contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Turn a full disk or a permission error while writing ``what`` into one line."""
        try:
            yield
        except OSError as e:
            err = write_failure(self.path, what, e)
            if err is None:
                raise
            raise err from None

    def metadata_problem(self, path: str) -> str | None:
        """What is wrong with the metadata of the node at ``path`` (None: it reads); a backend
        whose metadata lives inside one file (HDF5) cannot lose one node's alone."""
        return None if self.exists(path) else "missing"

    def orphaned(self, path: str) -> bool:
        """Whether data is stored under ``path`` while its metadata is missing or unreadable
        (a Zarr ``zarr.json`` deleted or damaged beside its chunks)."""
        return False

    def delete_orphan(self, path: str) -> None:
        """Delete what is stored under ``path`` whatever its metadata (repair)."""
        self.delete(path)

    @contextmanager
    def replacing(self, what: str) -> Iterator[None]:
        """Writes made inside appear in the store only when all of them succeeded (HDF5:
        into a copy of the file, renamed over it at the end). Zarr writes each chunk and
        metadata object atomically, and a section's status last, so it writes in place."""
        yield

    def flush(self) -> None:
        """Make everything written so far durable (no-op where writes already are)."""

    def close(self) -> None:
        """Release file handles."""


def is_string_dtype(dtype: Any) -> bool:
    return dtype is str or np.dtype(dtype).kind in "OUT"


def _du(path: str) -> int:
    """Bytes of the files under the folder ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total
