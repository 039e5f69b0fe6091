"""Turning low-level read and write failures into one-line errors that say what to do.

Readers call :func:`read_failure` when the library (zarr or h5py) fails to read a selection:
it reads the selection's chunks one by one to find the first damaged one and names the store,
the array and the item rows of that chunk. :func:`missing_rows` finds rows that read as the NaN
fill value of a float array: damage where their status says done (the chunk is not on disk),
unfinished work where it is pending. :func:`write_failure` turns a full disk or a permission
error into the message that keeps finished work safe.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

import numpy as np

from eastkd.errors import EastkdError, StoreDamageError, StoreWriteError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def repair_hint(store: str) -> str:
    return (f"run `eastkd verify {store} --repair`, then rerun the command that wrote it "
            "(extract or compress) to recompute exactly those rows")


METADATA_LOST = ("the store cannot be repaired in place: restore it from a copy, or extract "
                 "again into a new store")


def metadata_error(store: str, node: str, problem: str) -> StoreDamageError:
    """The one line for a node whose metadata (Zarr: its ``zarr.json``) is missing or does
    not parse. The metadata of a section's array can be rebuilt (verify --repair deletes the
    array, and the command that wrote it writes it again); anything else cannot."""
    key = f"{node}/zarr.json" if node else "zarr.json"
    parts = node.split("/")
    in_section = parts[0] in ("features", "embeddings", "targets") and len(parts) >= 3
    hint = repair_hint(store) if in_section else METADATA_LOST
    state = "missing" if problem == "missing" else f"damaged ({problem})"
    return StoreDamageError(f"{store}: {key} is {state}; {hint}")


def rows_text(lo: int, hi: int) -> str:
    """``items 8-15`` for rows ``lo:hi``."""
    return f"item {lo}" if hi - lo == 1 else f"items {lo}-{hi - 1}"


def damage_error(store: str, array: str, lo: int, hi: int, what: str) -> StoreDamageError:
    return StoreDamageError(f"{store}: {array} {rows_text(lo, hi)}: {what}; {repair_hint(store)}")


def reason_of(exc: BaseException) -> str:
    """A short, stable reason for a failed chunk read."""
    text = str(exc).lower()
    if "checksum" in text or "filter returned failure" in text:
        return "chunk damaged (checksum mismatch)"
    return f"chunk damaged (cannot decode: {type(exc).__name__})"


def selection_rows(n: int, selection: Any) -> np.ndarray:
    """The item rows (first axis) a basic selection touches, in selection order."""
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if first is Ellipsis or (isinstance(selection, tuple) and not selection):
        first = slice(None)
    return np.atleast_1d(np.arange(n)[first])


def chunk_ranges(rows: np.ndarray, chunk: int, n: int) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` row ranges of the item chunks holding ``rows``."""
    starts = np.unique(np.asarray(rows, dtype=np.int64) // chunk) * chunk
    return [(int(s), int(min(n, s + chunk))) for s in starts]


def read_failure(store: str, array: str, n: int, chunk: int, selection: Any, exc: BaseException,
                 read: Callable[[slice], Any]) -> StoreDamageError:
    """The error for a failed read of ``selection``, naming the first chunk that fails alone."""
    rows = selection_rows(n, selection)
    for lo, hi in chunk_ranges(rows, chunk, n):
        try:
            read(slice(lo, hi))
        except Exception as e:  # the library's own error types differ per codec
            return damage_error(store, array, lo, hi, reason_of(e))
    lo, hi = (int(rows.min()), int(rows.max()) + 1) if rows.size else (0, n)
    return damage_error(store, array, lo, hi, reason_of(exc))


def is_nan_fill(dtype: np.dtype, fill: Any) -> bool:
    """True for float arrays whose fill value is NaN (format 2): absent chunks read as NaN."""
    try:
        return np.dtype(dtype).kind == "f" and bool(np.isnan(fill))
    except (TypeError, ValueError):
        return False


def missing_rows(out: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of ``out`` (read rows ``rows``) that hold the NaN fill value, i.e. were never
    written or whose chunk is gone. Stored data is always finite, and chunks span whole rows,
    so the first value of each row decides."""
    rows = np.asarray(rows)
    if out.size == 0 or rows.size == 0:
        return np.empty(0, dtype=np.int64)
    if out.ndim and out.shape[0] == rows.size:  # the item axis is kept
        first = out.reshape(rows.size, -1)[:, 0]
        return rows[np.isnan(first)]
    return rows[:1] if np.isnan(out.flat[0]) else np.empty(0, dtype=np.int64)


def check_not_missing(store: str, array: str, n: int, chunk: int, selection: Any,
                      out: np.ndarray, pending: Callable[[np.ndarray], np.ndarray]) -> None:
    """Raise when rows of a NaN-fill array read as the fill value.

    ``pending(rows)`` says which of those rows their section's status marks pending. Rows
    marked done (ok or skipped) lost their chunk: that is damage. Pending rows were never
    written: reading them is refused too (they hold no data), but as unfinished work, not
    damage, since a repair has nothing to fix there."""
    rows = selection_rows(n, selection)
    bad = missing_rows(np.asarray(out), rows)
    if not bad.size:
        return
    waiting = np.asarray(pending(bad), dtype=bool)
    lost = bad[~waiting]
    if lost.size:
        lo, hi = chunk_ranges(lost[:1], chunk, n)[0]
        raise damage_error(store, array, lo, hi,
                           "chunk missing or never written (rows read as the fill value)")
    lo, hi = int(bad.min()), int(bad.max()) + 1
    raise EastkdError(f"{store}: {array} {rows_text(lo, hi)}: not computed yet (status "
                      "pending); read only rows whose status is done, or finish the section "
                      "by rerunning the command that writes it (extract or compress)")


def write_failure(store: str, what: str, exc: OSError) -> StoreWriteError | None:
    """The one-line error for a full disk or a permission problem; None for other errors."""
    if exc.errno in _DISK_FULL or "no space left" in str(exc).lower() \
            or "errno = 28" in str(exc):
        return StoreWriteError(f"{store}: disk full while writing {what}; free space then rerun "
                               "the same command; finished work is kept", disk_full=True)
    text = str(exc).lower()
    if exc.errno in _NO_PERMISSION or isinstance(exc, PermissionError) \
            or "permission denied" in text or "read-only file system" in text:
        return StoreWriteError(f"{store}: cannot write {what} (permission denied or read-only "
                               "file system); make the store writable or copy it, then rerun "
                               "the same command; finished work is kept")
    return None
