"""Writing overlaps computing: finished batches go through a bounded queue to a writer thread.

The writer gathers each array's rows in a buffer of one storage chunk and writes the chunk once,
when its last row arrives; when a unit's last batch is written it writes the unit's ``error`` and
``status`` (last, after a flush). So ``status == ok`` still means the data is on disk, a run
killed at any moment (SIGKILL included, with batches still queued) loses only units without
status, and every chunk is written exactly once per run. Memory: one chunk per array (about
4 MB each, by the store's chunking) plus the queued batches.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eastkd.pipeline.extract.plan import Batch, Unit
from eastkd.store import OK, SKIPPED, EastkdError, Section

_DONE = object()


@dataclass
class BatchResult:
    """One computed batch, on its way to the writer. Tensors may still be copying from the
    device; ``ready`` (a CUDA event, or None) says when they are on the host."""

    batch: Batch
    errors: list[str]  # decoding errors per row
    ok_rows: list[int]  # rows the teacher ran on (no decoding error)
    clip: torch.Tensor | None  # (len(ok_rows), D)
    frames: torch.Tensor | None  # (len(ok_rows), T, D)
    logmel: torch.Tensor | None  # (k, M, F), zeros where decoding failed
    ready: Any = None
    views: np.ndarray | None = None  # (k, K, 3) view parameters, with views (see core.views)


@dataclass
class Tally:
    """What the writer has finished in this run."""

    written: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    units: int = 0


class ChunkBuffer:
    """Rows of one array, collected one storage chunk at a time and written once per chunk."""

    def __init__(self, section: Section, name: str, chunk: int, n: int,
                 row_shape: tuple[int, ...], dtype: str) -> None:
        self.section, self.name, self.chunk, self.n = section, name, chunk, n
        self.row_shape, self.dtype = row_shape, dtype
        self.start = -1
        self.rows: np.ndarray | None = None

    def add(self, start: int, values: np.ndarray) -> None:
        i = 0
        while i < len(values):
            row = start + i
            if self.rows is None:
                self.start = row // self.chunk * self.chunk
                stop = min(self.n, self.start + self.chunk)
                self.rows = np.zeros((stop - self.start, *self.row_shape), dtype=self.dtype)
            take = min(len(values) - i, self.start + len(self.rows) - row)
            self.rows[row - self.start:row - self.start + take] = values[i:i + take]
            i += take
            if row + take == self.start + len(self.rows):
                self.section.write_rows(self.start, {self.name: self.rows})
                self.rows = None


@dataclass
class SectionRows:
    """A section being written and its chunk buffers."""

    section: Section
    buffers: dict[str, ChunkBuffer]
    errors: list[str] = field(default_factory=list)


class Writer:
    """The writer thread; :meth:`put` hands it a :class:`BatchResult` (blocking when the queue
    is full), :meth:`close` waits for it. An error in the thread (a failing item under
    ``--on-error fail``, a full disk, ...) is raised in the caller's thread by the next
    :meth:`put` or by :meth:`close`, as one line."""

    def __init__(self, emb: Section, feat: Section, arrays: dict[str, tuple[int, ...]],
                 feat_shape: tuple[int, ...], dtype: str, n: int, describe: Any,
                 on_error: str, durations: np.ndarray, teacher_name: str, key: str,
                 depth: int = 8) -> None:
        self.emb, self.feat, self.dtype, self.n = emb, feat, dtype, n
        self.arrays, self.feat_shape = arrays, feat_shape
        self.describe, self.on_error = describe, on_error
        self.durations, self.teacher_name, self.key = durations, teacher_name, key
        self.tally = Tally()
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._unit: Unit | None = None
        self._emb: SectionRows | None = None
        self._feat: SectionRows | None = None
        self._thread = threading.Thread(target=self._run, name="eastkd-writer", daemon=True)

    def start(self) -> "Writer":
        self._thread.start()
        return self

    # -- caller's side ---------------------------------------------------------------------------
    def put(self, result: BatchResult) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(result, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write everything queued (finished units get their status), stop the thread, and
        raise its error if it had one."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        self._raise_if_failed()

    def abandon(self) -> None:
        """Like :meth:`close` but never raises: used while another error propagates."""
        try:
            self.close()
        except BaseException:
            pass

    def _raise_if_failed(self) -> None:
        e = self.error
        if e is None:
            return
        if isinstance(e, EastkdError):
            raise e
        first = (str(e).splitlines() or [""])[0]
        raise EastkdError(f"writing the store failed ({type(e).__name__}: {first}); finished "
                          "units are kept: fix the cause and rerun the same command") from e

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue  # drain: the caller will see the error
            try:
                self._write(item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self.error = e

    def _write(self, r: BatchResult) -> None:
        if r.ready is not None:
            r.ready.synchronize()
        b = r.batch
        if self._unit is not b.unit:
            self._open_unit(b.unit)
        k = b.stop - b.start
        errors = list(r.errors)
        clip = np.zeros((k, *self.arrays["clip"]), dtype=self.dtype)  # (k, [K,] D)
        frames = np.zeros((k, *self.arrays["frames"]), dtype=self.dtype) \
            if "frames" in self.arrays else None
        if r.ok_rows:
            c = r.clip.float().numpy()
            bad = ~np.isfinite(c).reshape(len(c), -1).all(axis=1)
            f = None
            if frames is not None:
                f = r.frames.float().numpy()
                bad |= ~np.isfinite(f).reshape(len(f), -1).all(axis=1)
            for j, row in enumerate(r.ok_rows):
                if bad[j]:
                    errors[row] = f"teacher {self.teacher_name} produced NaN/inf"
            good = [j for j in range(len(r.ok_rows)) if not bad[j]]
            rows = [r.ok_rows[j] for j in good]
            clip[rows] = _cast(c[good], self.dtype, f"{self.key} embeddings")
            if frames is not None:
                frames[rows] = _cast(f[good], self.dtype, f"{self.key} frame embeddings")
        self._fail_on_first(b, errors)
        self._emb.buffers["clip"].add(b.start, clip)
        if frames is not None:
            self._emb.buffers["frames"].add(b.start, frames)
        if r.views is not None:  # parameters of every row's views, drawn for failed rows too
            self._emb.buffers["views"].add(b.start, r.views)
        self._emb.errors.extend(errors)
        if self._feat is not None:
            values = np.zeros((k, *self.feat_shape), dtype=self.dtype)
            if r.logmel is not None:
                values[:] = _cast(r.logmel.float().numpy(), self.dtype, "log-mel features")
            values[[j for j in range(k) if r.errors[j]]] = 0
            self._feat.buffers["values"].add(b.start, values)
            self._feat.errors.extend(r.errors)
        if b.stop == b.unit.stop:
            self._finish_unit()

    def _fail_on_first(self, b: Batch, errors: list[str]) -> None:
        if self.on_error != "fail":
            return
        for j, reason in enumerate(errors):
            if reason:
                raise EastkdError(f"{self.describe(b.start + j)}: {reason}; fix or remove it, "
                                  "or rerun with --on-error skip (finished work is kept)")

    def _open_unit(self, unit: Unit) -> None:
        self._unit = unit
        self._emb = SectionRows(self.emb, {name: self._buffer(self.emb, name, shape)
                                      for name, shape in self.arrays.items()})
        self._feat = None
        if unit.features:
            values = self._buffer(self.feat, "values", self.feat_shape)
            self._feat = SectionRows(self.feat, {"values": values})

    def _buffer(self, section: Section, name: str, shape: tuple[int, ...]) -> ChunkBuffer:
        array = section.array(name)
        dtype = "float64" if name == "views" else self.dtype
        return ChunkBuffer(section, name, array.chunks[0], self.n, shape, dtype)

    def _finish_unit(self) -> None:
        """Data is written (the last chunk with the last batch); now error and status, last."""
        u = self._unit
        if self._feat is not None:
            f_status = _status(self._feat.errors)
            self._feat.section.write_block(u.start, {}, f_status, self._feat.errors)
        status = _status(self._emb.errors)
        self._emb.section.write_block(u.start, {}, status, self._emb.errors)
        t = self.tally
        bad = int((status == SKIPPED).sum())
        t.written += len(status) - bad
        t.skipped += bad
        t.audio_seconds += float(np.nansum(self.durations[u.start:u.stop][status == OK]))
        t.units += 1
        self._unit = self._emb = self._feat = None


def _status(errors: list[str]) -> np.ndarray:
    return np.where([bool(e) for e in errors], SKIPPED, OK).astype(np.uint8)


def _cast(x: np.ndarray, dtype: str, what: str) -> np.ndarray:
    arr = x.astype(dtype)
    if not np.isfinite(arr).all():
        raise EastkdError(f"{what} overflows {dtype}; extract again with --dtype float32")
    return arr
