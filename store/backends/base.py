"""The small contract a storage backend fulfils for :class:`eastkd.store.Store`.

A backend stores named N-d arrays in nested groups, each array and group with JSON-able
attributes. Paths are ``/``-separated and relative to the store root (``"embeddings/crepe/clip"``).
Strings are variable-length UTF-8 in both backends.

A backend implements the twelve abstract members of :class:`Backend`, its raw operations:
create a group or an array, ``kind``, ``children``, ``info``, ``_read_raw`` (a decoded read),
``write``, the two attribute calls, ``_delete`` (a node, or one chunk of an array), and at the
chunk level ``_stored_chunk_refs`` (the chunks on disk) and ``_check_chunk_batch`` (a batch of
chunks' raw bytes fetched and their checksums checked). Written once here, above them: checksummed
reads that name the damaged rows (``read``), the checksum pass of ``verify`` (``chunk_checks``:
threads, order, progress), ``stored_chunks``, ``delete`` and ``reset_chunk`` (repair), existence
tests, pending rows, write-failure messages and bytes on disk. Capabilities
(``concurrent_writers``, ``abandoned_files``) are asked instead of naming a backend.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np

from eastkd.store import location
from eastkd.store.damage import check_not_missing, is_nan_fill, read_failure, write_failure

# the status of a section's rows (docs/store-format.md, "Sections")
PENDING, OK, SKIPPED = 0, 1, 2


class ArrayInfo(NamedTuple):
    """What a backend knows of one stored array (fixed at creation)."""

    shape: tuple[int, ...]
    dtype: np.dtype  # ``object`` for strings
    chunks: tuple[int, ...]
    fill_value: Any
    checksummed: bool  # every chunk carries a checksum (format 2 numeric arrays)


class ChunkRef(NamedTuple):
    """A chunk stored on disk, as :meth:`Backend._stored_chunk_refs` lists it."""

    path: str  # of its array
    index: int  # along items
    order: Any  # chunks are checked in this order (HDF5: the file offset, so a pass reads forward)
    where: Any  # what the backend fetches its raw bytes by (Zarr: its key; HDF5: its place)


# (bytes read, problem) of one chunk's raw bytes: problem "" for none, None for a chunk a repair
# replaced by the fill value (so absent, not reported)
ChunkCheck = tuple[int, "str | None"]


class Backend(ABC):
    """One open store file or directory.

    The abstract members are the raw operations a backend must provide; what can be said
    once for every backend (checksummed reads, the checksum pass, deletes and chunk resets,
    existence, pending rows, write failures, bytes on disk) is written here above them.
    """

    name: str
    path: str
    read_only: bool
    # capabilities, asked instead of naming a backend:
    concurrent_writers: bool = False  # processes that own whole chunks may write at once
    # what _read_raw raises for a chunk that fails its checksum or does not decode
    decode_errors: tuple[type[BaseException], ...] = (Exception,)
    check_threads: int = 4  # batches of chunks fetched and checked at once by chunk_checks
    check_batch: int = 1  # chunks a batch holds (see _chunk_batches)

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
    def _read_raw(self, path: str, selection: Any) -> np.ndarray:
        """A basic selection of the array at ``path`` as the library decodes it, strings as a
        numpy array of ``str`` objects; a chunk that fails its checksum or does not decode
        raises one of :attr:`decode_errors`."""

    def read(self, path: str, selection: Any = slice(None), allow_missing: bool = False
             ) -> np.ndarray:
        """Read a basic selection; strings come back as a numpy array of ``str`` objects.

        A chunk that fails its checksum or does not decode raises
        :class:`~eastkd.errors.StoreDamageError` naming its rows; so do rows of a
        NaN-fill array that read as fill (a missing chunk) unless ``allow_missing``."""
        info = self.info(path)  # damaged metadata: its own line, raised here
        n, chunk = info.shape[0], info.chunks[0]
        try:
            out = self._read_raw(path, selection)
        except self.decode_errors as e:  # zarr raises many types, per codec
            raise read_failure(self.path, path, n, chunk, selection, e,
                               lambda s: self._read_raw(path, s)) from None
        if not allow_missing and is_nan_fill(info.dtype, info.fill_value):
            check_not_missing(self.path, path, n, chunk, selection, out,
                              lambda rows: self.pending_rows(path, rows))
        return out

    @abstractmethod
    def write(self, path: str, selection: Any, value: np.ndarray) -> None: ...

    @abstractmethod
    def get_attrs(self, path: str = "") -> dict[str, Any]: ...

    @abstractmethod
    def update_attrs(self, path: str, attrs: dict[str, Any]) -> None: ...

    @abstractmethod
    def _delete(self, path: str, chunk: int | None = None) -> None:
        """Delete the array or group at ``path`` (it exists) with everything under it; or, with
        ``chunk``, item-chunk ``chunk`` of the array at ``path``, without reading it, so that
        its rows read as the fill value. Called inside :meth:`writing`."""

    def delete(self, path: str) -> None:
        """Delete an array or a group with everything under it (nothing if there is none)."""
        if self.exists(path):
            with self.writing(path, need=0):
                self._delete(path)

    def reset_chunk(self, path: str, index: int) -> None:
        """Replace item-chunk ``index`` by the fill value without reading it (repair)."""
        with self.writing(path, need=0):
            self._delete(path, chunk=index)

    def nbytes_stored(self) -> int:
        """Bytes the store occupies: under its URL, in its folder, or its file's size."""
        if location.is_url(self.path):
            return location.url_nbytes(self.path)
        if os.path.isdir(self.path):
            return _du(self.path)
        return os.path.getsize(self.path)

    @abstractmethod
    def _stored_chunk_refs(self, path: str) -> list[ChunkRef] | None:
        """The chunks of the array at ``path`` present on disk; None where it cannot tell."""

    def stored_chunks(self, path: str) -> set[int] | None:
        """Indices (along items) of the chunks present on disk; None where it cannot tell."""
        refs = self._stored_chunk_refs(path)
        return None if refs is None else {ref.index for ref in refs}

    @abstractmethod
    def _check_chunk_batch(self, batch: list[ChunkRef]) -> list[ChunkCheck]:
        """Fetch the raw (still encoded) bytes of a batch of stored chunks and check each one's
        checksum: ``(bytes read, problem)`` per chunk, in order (see :data:`ChunkCheck`).
        Called in :attr:`check_threads` threads at once."""

    def _chunk_batches(self, refs: list[ChunkRef]) -> list[list[ChunkRef]]:
        """``refs`` (in check order) in batches, each fetched and checked by one thread:
        :attr:`check_batch` chunks each."""
        return [refs[i:i + self.check_batch] for i in range(0, len(refs), self.check_batch)]

    def chunk_checks(self, paths: list[str], progress: Callable[[int], Any] = lambda n: None
                     ) -> dict[str, list[tuple[int, int, str]]]:
        """Check every stored chunk's checksum of the arrays at ``paths`` on its raw bytes,
        without decoding: for each checksummed array, ``(item-chunk index, bytes on disk,
        problem or "")`` per stored chunk; arrays without checksums (strings in HDF5, format
        1) are left out, and verify decodes them instead. ``progress(1)`` per chunk.

        The chunks of all ``paths`` are checked in one pass, in their backend's order, in
        batches fetched and checked in threads (file reads and checksums run outside the GIL),
        all submitted at once: results are small, and no thread waits for another to hand
        out work."""
        self.flush()  # everything written so far is on disk before its raw bytes are read
        out: dict[str, list[tuple[int, int, str]]] = {}
        refs: list[ChunkRef] = []
        for path in paths:
            if not self.info(path).checksummed:
                continue
            out[path] = []
            refs += self._stored_chunk_refs(path) or []
        refs.sort(key=lambda ref: ref.order)
        batches = self._chunk_batches(refs)
        with ThreadPoolExecutor(self.check_threads) as pool:
            for batch, checks in zip(batches, pool.map(self._check_chunk_batch, batches)):
                for ref, (nbytes, problem) in zip(batch, checks):
                    progress(1)
                    if problem is not None:
                        out[ref.path].append((ref.index, nbytes, problem))
        return out

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
    def writing(self, what: str, need: int | None = None) -> Iterator[None]:
        """Turn a full disk or a permission error while writing ``what`` into one line.
        ``need``: the bytes the write adds (None for a flush), for a backend that checks for
        room before writing."""
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
