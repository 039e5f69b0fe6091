"""HDF5 backend (``*.h5``, ``*.hdf5``) via h5py, with the same logical layout as Zarr.

Attributes that are not plain scalars or strings are stored as JSON strings (prefix ``json:``)
so that any h5py reader can see them. Strings are variable-length UTF-8. The file is opened
lazily (on first use) so that an object made before a DataLoader forks opens its own handle in
each worker: h5py handles do not survive fork. HDF5 has no safe concurrent writers, so sharded
extraction is Zarr only.

Numeric arrays carry HDF5's fletcher32 checksum per chunk (after gzip + shuffle); float arrays
have fill value NaN. HDF5 cannot filter variable-length strings, so string arrays carry no
checksum (the items table is covered by its own checksum attribute). A store opened for writing
that the user may not write (a read-only file or medium) is opened for reading, so a run with
nothing to do works on it; a write then fails with one line.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import struct
import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal, NamedTuple, Union

import h5py
import numpy as np

from eastkd.store.backends.base import ArrayInfo, Backend, ChunkCheck, ChunkRef, is_string_dtype
from eastkd.store.damage import (
    chunk_ranges,
    damage_error,
    reason_of,
    repair_hint,
    selection_rows,
    write_failure,
)
from eastkd.errors import EastkdError, StoreDamageError, StoreWriteError

_STR = h5py.string_dtype("utf-8")
# free bytes a write needs beyond its own data (HDF5 metadata: chunk index nodes, object
# headers, a heap collection for strings; tmpfs and disks allocate whole 4 KB pages)
_ROOM_MARGIN = 64 << 10
# handles dropped after a failed write or close that could not be closed unflushed (see
# _close_unflushed; only where the file has no POSIX descriptor): closing (or garbage-collecting)
# them flushes data HDF5 can never write, which fails or crashes h5py; they are kept open until
# the process ends (the CLI then exits without HDF5's exit flush)
_ABANDONED: list[h5py.File] = []


def has_abandoned_files() -> bool:
    """Whether a write failed (e.g. disk full): HDF5 then crashes when it flushes its open
    files at process exit, so the CLI ends the process without that flush."""
    return bool(_ABANDONED)


def _quiet_release_errors(hook: Any) -> Any:
    """An unraisable-exception hook that drops h5py's repeats of a failed write (raised while
    releasing handles after the failure was already reported as one line)."""

    def quiet(args: Any) -> None:
        if isinstance(args.exc_value, RuntimeError) and "file write failed" in str(args.exc_value):
            return
        hook(args)

    quiet._eastkd = True  # type: ignore[attr-defined]
    return quiet


def _quiet_after_failure() -> None:
    """From a failed write on: h5py's repeats of it (raised while releasing the handles of
    the failed operation, each printed as a traceback) are dropped; the failure itself is
    reported as one line."""
    if not getattr(sys.unraisablehook, "_eastkd", False):
        sys.unraisablehook = _quiet_release_errors(sys.unraisablehook)


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still write on the file system holding ``path``."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except (OSError, AttributeError):  # no statvfs (Windows): cannot tell
        return None
    return st.f_bavail * st.f_frsize


def _nbytes(value: Any) -> int:
    """Bytes ``value`` takes on disk at most (strings: their UTF-8 and a heap entry each)."""
    value = np.asarray(value)
    if value.dtype.kind in "OUS":
        return sum(len(str(v).encode()) + 16 for v in value.ravel())
    return int(value.nbytes)


def _open_failure(path: str, exc: OSError) -> EastkdError:
    """The one line for an HDF5 file that cannot be opened, with what to do about it."""
    text = str(exc)
    first = text.split(" (", 1)[-1].rstrip(")") if " (" in text else text
    if "unable to lock file" in text or "errno = 11" in text:
        return StoreWriteError(
            f"{path}: another process is writing this store (HDF5 allows one writer and no "
            "readers meanwhile); wait for it to finish and rerun, or write a Zarr store "
            "(.zarr), where several writers work at once with `extract --shard I/N`")
    if "truncated file" in text:
        return StoreDamageError(
            f"{path}: cannot open as HDF5 (the file is cut short: {first}); an interrupted "
            "copy or download: copy it again from its source or restore it from a backup "
            "(or extract again into a new store)")
    return EastkdError(f"{path}: cannot open as HDF5 ({first}); check the path, and if the "
                       "file is a damaged copy, copy it again from its source or restore it "
                       "from a backup")


def _close_unflushed(f: h5py.File) -> bool:
    """Close ``f`` without writing what HDF5 still holds for it (data it cannot write into a
    full disk, or into a damaged file): its file descriptor is first pointed at /dev/null, so
    the flush that HDF5 does on close writes nowhere. True when closed so; False where it
    cannot be done (not a POSIX file descriptor), and the handle must then stay open."""
    if os.name != "posix":
        return False
    try:
        fd = f.id.get_vfd_handle()
        if not isinstance(fd, int) or fd < 0:
            return False
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)  # also releases HDF5's lock on the file
        finally:
            os.close(null)
        f.close()
    except Exception:  # noqa: BLE001 - any failure: keep the handle, as without this
        return False
    return True


def _encode(v: Any) -> Any:
    if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    return "json:" + json.dumps(v)


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v.startswith("json:"):
        return json.loads(v[5:])
    if isinstance(v, np.generic):
        return v.item()
    return v


Buffer = Union[bytes, bytearray, memoryview]  # a chunk's raw bytes (writable unless bytes)
_SPAN_BYTES = 8 << 20  # neighbouring chunks read at once, up to this long
_SPAN_GAP = 64 << 10  # bytes between chunks read through (other arrays' small chunks)
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_BUFFERS = threading.local()  # each checking thread's read buffer (see _span_buffer)


def end_of_allocation(path: str) -> int | None:
    """The file's end of allocation as its superblock records it (HDF5 file format,
    "Superblock"): HDF5 refuses to read a chunk past it, even where the bytes are there (a
    writer that ended after flushing a dataset but not the file). None where it cannot be
    read here (a user block, an unknown superblock version): then chunks are read through HDF5.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:8] != _SIGNATURE:
        return None
    version = head[8]
    if version in (0, 1):
        size, base = head[13], 24 if version == 0 else 28
    elif version in (2, 3):
        size, base = head[9], 12
    else:
        return None
    fmt = {4: "<I", 8: "<Q"}.get(size)
    if fmt is None:
        return None
    base_address, _, eoa = struct.unpack_from("<" + fmt[1] * 3, head, base)
    return eoa if base_address == 0 else None


@functools.cache
def _fletcher32() -> Callable[[Buffer], int] | None:
    """HDF5's own fletcher32 (``H5_checksum_fletcher32`` of the libhdf5 h5py runs on), called
    through ctypes, which releases the GIL: checksums then run in parallel with each other and
    with reads. None where that library cannot be found (then numcodecs' copy is used)."""
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "/libhdf5" in line
                    and "libhdf5_hl" not in line}
        lib = ctypes.CDLL(sorted(libs)[0])
        fn = lib.H5_checksum_fletcher32
    except (OSError, IndexError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_size_t]

    def fletcher32(raw: Buffer) -> int:
        """Of all but the last 4 bytes (where HDF5 stores it)."""
        data = raw if isinstance(raw, bytes) else ctypes.addressof(ctypes.c_char.from_buffer(raw))
        return int(fn(data, len(raw) - 4))

    return fletcher32


def _checksum_ok(raw: Buffer) -> bool:
    """Whether the chunk's last 4 bytes are the fletcher32 of the rest, as HDF5's filter
    stores it (little-endian; or byte-swapped, as HDF5 1.6.0-1.6.4 did)."""
    fletcher = _fletcher32()
    if fletcher is None:
        from numcodecs.fletcher32 import Fletcher32

        try:
            Fletcher32().decode(raw)
            return True
        except RuntimeError:
            return False
    value, stored = fletcher(raw), int.from_bytes(raw[-4:], "little")
    swapped = ((value & 0x00FF00FF) << 8) | ((value & 0xFF00FF00) >> 8)
    return stored in (value, swapped)


def _fill_bytes(ds: h5py.Dataset) -> bytes:
    """A whole chunk of the fill value, unfiltered: what a repair stores for a damaged chunk."""
    return np.full(ds.chunks, ds.fillvalue, dtype=ds.dtype).tobytes()


def _chunk_problem(raw: Buffer, place: "_Place") -> str | None:
    """What is wrong with a stored chunk's raw bytes: "" for nothing, None for a chunk a repair
    replaced by the fill value with every filter skipped (so absent)."""
    if place.mask:
        return None if raw == _fill_bytes(place.ds) else \
            "chunk damaged (stored without its filters)"
    if not any(raw[-4:]) and not np.frombuffer(raw, dtype=np.uint8).any():
        # zeroed bytes (a hole from a partial copy) carry a matching zero checksum, but a
        # gzip stream is never all zeros
        return "chunk damaged (all bytes zero)"
    return "" if _checksum_ok(raw) else "chunk damaged (checksum mismatch)"


class _Place(NamedTuple):
    """Where a stored chunk's raw bytes are (the ``where`` of its :class:`ChunkRef`)."""

    offset: int  # in the file
    size: int
    mask: int  # filters skipped
    position: tuple[int, ...]  # of its first element in the array
    ds: h5py.Dataset


def _spans(refs: list[ChunkRef]) -> Iterator[list[ChunkRef]]:
    """Chunks (in file order) grouped into runs of neighbours up to ``_SPAN_BYTES`` long, each
    read at once: fewer reads, and fewer hand-overs of the GIL between threads."""
    span: list[ChunkRef] = []
    for ref in refs:
        offset, end = ref.where.offset, ref.where.offset + ref.where.size
        if span and (offset - (span[-1].where.offset + span[-1].where.size) > _SPAN_GAP
                     or end - span[0].where.offset > _SPAN_BYTES):
            yield span
            span = []
        span.append(ref)
    if span:
        yield span


def _span_buffer(size: int) -> bytearray:
    """This thread's reused read buffer, at least ``size`` long: a fresh one per read would be
    zero-filled, a page fault per 4 KB, while holding the GIL."""
    if len(getattr(_BUFFERS, "buf", b"")) < size:
        _BUFFERS.buf = bytearray(max(size, _SPAN_BYTES))
    return _BUFFERS.buf


class HDF5Backend(Backend):
    name = "hdf5"
    concurrent_writers = False  # one file, one writer: HDF5 has no safe concurrent writers
    decode_errors = (OSError, RuntimeError, ValueError)  # h5py's, for a chunk that fails
    check_threads = min(4, os.cpu_count() or 1)  # spans of chunks read and checksummed at once

    @classmethod
    def abandoned_files(cls) -> bool:
        return has_abandoned_files()

    def __init__(self, path: str, mode: str = "r") -> None:
        self.path = path
        self.read_only = mode == "r"
        self._mode = "r" if self.read_only else "a"
        self._file: h5py.File | None = None
        self._file_path = path  # the file open now: a working copy during replacing()
        self._pid = -1
        try:
            self._f()  # fail early on a bad path
        except StoreWriteError:
            # a read-only file or medium: open it for reading; a write then fails in one line
            self._mode = "r"
            self._f()

    def _f(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self._file_path, self._mode)
            except OSError as e:
                err = write_failure(self.path, "the file", e) if self._mode != "r" else None
                raise (err or _open_failure(self.path, e)) from None
            self._pid = os.getpid()
        return self._file

    def _fw(self) -> h5py.File:
        """The file, for a write (opened read-only when the file or medium is)."""
        if self.read_only:
            raise EastkdError(f"{self.path}: store is open read-only")
        if self._mode == "r":
            raise write_failure(self.path, "the file", PermissionError(13, "read-only"))
        return self._f()

    @contextmanager
    def writing(self, what: str, need: int | None = None) -> Iterator[None]:
        """Like :meth:`Backend.writing`, for h5py's errors too (a failed flush is a
        RuntimeError). HDF5 has no journal: a write that fails half-way through a flush can
        leave links to objects it never wrote. So a write of ``need`` bytes (None for a flush,
        which adds nothing of its own) first checks that the file system has room for them
        plus :data:`_ROOM_MARGIN`, and stops with the disk-full line before touching the file
        when it has not. Should a write fail anyway (another process filled the disk
        meanwhile), HDF5 holds data it can never write, so the file
        handle is dropped unflushed: nothing half-written is flushed later, and no close or
        garbage collection fails (or crashes) on it. A full disk says to free space; any other
        failure of HDF5 (e.g. a file whose index names chunks beyond its end) is damage."""
        if need is not None and self._mode != "r":
            self._check_room(what, need)
        try:
            yield
        except EastkdError:
            raise
        except (OSError, RuntimeError) as e:
            _quiet_after_failure()
            err = write_failure(self.path, what, e if isinstance(e, OSError) else OSError(str(e)))
            if err is not None and not err.disk_full:
                raise err from None  # permission denied: refused before anything was written
            self._abandon(unflushed=err is not None)
            raise (err or self._damaged(f"writing {what}", e)) from None

    def _check_room(self, what: str, need: int) -> None:
        free = free_bytes(self._file_path)
        if free is not None and free < need + _ROOM_MARGIN:
            raise write_failure(self.path, what, OSError(errno.ENOSPC, "No space left"))

    @contextmanager
    def replacing(self, what: str) -> Iterator[None]:
        """Write ``what`` into a copy of the file, renamed over the store only when complete.

        The store itself is not written: a failure at any point (a full disk included) leaves
        it as it was, and the copy is removed. The store stays open meanwhile, which keeps its
        lock: no other HDF5 writer starts on it and loses its work to the rename. Needs free
        space for the store's size again (the copy)."""
        self._fw()  # a store that may not be written: one line, before any copy
        self.flush()  # the copy starts from everything written so far
        base, ext = os.path.splitext(os.path.basename(self.path))
        tmp = os.path.join(os.path.dirname(os.path.abspath(self.path)),
                           f".{base}.partial-{uuid.uuid4().hex[:8]}{ext}")
        original = self._f()
        doing = f"a working copy of the store for {what} (written into a copy first, it " \
                "needs the store's size free)"
        try:
            self._check_room(doing, os.path.getsize(self.path))
            try:
                shutil.copyfile(self.path, tmp)
            except OSError as e:
                raise (write_failure(self.path, doing, e) or e) from None
            self._file, self._file_path = None, tmp
            yield
            self.flush()  # a failure here is the disk-full line too
            self.close()
            os.replace(tmp, self.path)
        finally:
            self._file_path = self.path
            if self._file is not None and self._file is not original:
                self._abandon(unflushed=True)  # the copy, after a failure
            if os.path.exists(tmp):
                os.remove(tmp)
            original.close()  # read only since the flush above: writes nothing
            self._file = None

    def _damaged(self, doing: str, exc: BaseException) -> StoreDamageError:
        first = (str(exc).splitlines() or [""])[0]
        return StoreDamageError(f"{self.path}: {doing} failed (HDF5: {first}); the file is "
                                f"damaged: {repair_hint(self.path)}")

    def _abandon(self, unflushed: bool = False) -> None:
        """Drop the file handle after a failed write without flushing what HDF5 still holds:
        the file keeps what the last successful flush wrote (every finished row). With
        ``unflushed`` (the disk is full) it is closed writing nowhere; otherwise (HDF5 itself
        refused, e.g. a damaged file, which it would refuse on close too, leaving h5py objects
        that crash when garbage-collected) it is kept open."""
        f, self._file = self._file, None
        if f is None or (unflushed and _close_unflushed(f)):
            return
        _ABANDONED.append(f)  # kept open until the process ends; the CLI then skips HDF5's flush
        if not getattr(sys.unraisablehook, "_eastkd", False):
            sys.unraisablehook = _quiet_release_errors(sys.unraisablehook)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def create_group(self, path: str, attrs: dict[str, Any] | None = None) -> None:
        with self.writing(path, need=0):
            g = self._fw().require_group(path)
            for k, v in (attrs or {}).items():
                g.attrs[k] = _encode(v)

    def create_array(self, path, shape, chunks, dtype, attrs=None, data=None, dims=None) -> None:
        if self._get(path) is not None:
            raise FileExistsError(path)
        string = is_string_dtype(dtype)
        numeric = not string and all(shape)
        chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))
        dt = _STR if string else np.dtype(dtype)
        with self.writing(path, need=0 if data is None else _nbytes(data)):
            ds = self._fw().create_dataset(
                path, shape=tuple(shape), chunks=chunks if all(shape) else None, dtype=dt,
                compression="gzip" if numeric else None, compression_opts=4 if numeric else None,
                shuffle=numeric, fletcher32=numeric,
                fillvalue=np.nan if not string and dt.kind == "f" else None,
            )
            for k, v in (attrs or {}).items():
                ds.attrs[k] = _encode(v)
            if dims:
                ds.attrs["dimension_names"] = _encode(list(dims))
            if data is not None:
                ds[...] = data

    def _get(self, path: str) -> Any:
        """The group or dataset at ``path`` (None if absent); a link HDF5 cannot follow (an
        object named beyond the file's end) is damage in one line."""
        try:
            return self._f().get(path) if path else self._f()
        except (KeyError, RuntimeError, OSError, ValueError) as e:
            first = (str(e).splitlines() or [""])[0].strip("'\"")
            raise StoreDamageError(
                f"{self.path}: {path} cannot be read (HDF5: {first}); the file is damaged: "
                "restore it from a copy, or extract again into a new store") from None

    def kind(self, path: str) -> Literal["array", "group"] | None:
        node = self._get(path)
        return None if node is None else "array" if isinstance(node, h5py.Dataset) else "group"

    def children(self, path: str) -> list[str]:
        node = self._get(path)
        return sorted(node.keys()) if isinstance(node, h5py.Group) else []

    def _ds(self, path: str) -> h5py.Dataset:
        node = self._get(path)
        if not isinstance(node, h5py.Dataset):
            raise EastkdError(f"{self.path}: no array {path!r} in this store")
        return node

    def info(self, path: str) -> ArrayInfo:
        ds = self._ds(path)
        string = h5py.check_string_dtype(ds.dtype)
        return ArrayInfo(tuple(ds.shape), np.dtype(object) if string else ds.dtype,
                         tuple(ds.chunks or ds.shape), ds.fillvalue, bool(ds.fletcher32))

    def _read_raw(self, path: str, selection: Any) -> np.ndarray:
        ds = self._ds(path)
        if h5py.check_string_dtype(ds.dtype):
            return np.asarray(ds.asstr()[selection], dtype=object)
        return ds[selection]

    def write(self, path, selection, value) -> None:
        with self.writing(path, need=_nbytes(value)):
            f = self._fw()
            ds = self._ds(path)
            self._check_overwritten(path, ds, selection)
            ds[selection] = value
            # the whole file, while ds lives (h5py ignores write errors when a dataset handle
            # is released): the chunk, then the chunk index together with the superblock's
            # end-of-allocation address. A dataset flush alone writes the index but not that
            # address, and a file left so by a failed later write names chunks beyond its end
            # (HDF5: "addr overflow" on every later read or write of them)
            f.flush()

    def _check_overwritten(self, path: str, ds: h5py.Dataset, selection: Any) -> None:
        """Refuse to overwrite a stored chunk that cannot be read back (e.g. named beyond the
        file's end): HDF5 would take the write, then fail to flush it, on close too, leaving
        h5py objects that crash the process when garbage-collected. Only chunks already on
        disk are read (raw, undecoded), so writing new rows costs nothing."""
        if ds.chunks is None or h5py.check_string_dtype(ds.dtype):
            return
        n, chunk = ds.shape[0], ds.chunks[0]
        for lo, hi in chunk_ranges(selection_rows(n, selection), chunk, n):
            offset = (lo,) + (0,) * (ds.ndim - 1)
            if ds.id.get_chunk_info_by_coord(offset).byte_offset is None:
                continue  # not stored yet
            try:
                ds.id.read_direct_chunk(offset)
            except (OSError, RuntimeError) as e:
                raise damage_error(self.path, path, lo, hi, reason_of(e)) from None

    def _stored_chunk_refs(self, path: str) -> list[ChunkRef] | None:
        """The chunks of ``path`` as HDF5's chunk index names them, checked in file order
        (arrays interleave as extract wrote them)."""
        ds = self._ds(path)
        if ds.chunks is None:
            return None
        step, refs = ds.chunks[0], []
        ds.id.chunk_iter(lambda c: refs.append(ChunkRef(
            path, c.chunk_offset[0] // step, c.byte_offset,
            _Place(c.byte_offset, c.size, c.filter_mask, c.chunk_offset, ds))))
        return refs

    def _chunk_batches(self, refs: list[ChunkRef]) -> list[list[ChunkRef]]:
        return list(_spans(refs))

    def _check_chunk_batch(self, batch: list[ChunkRef]) -> list[ChunkCheck]:
        """Each chunk's fletcher32 checksum checked on its raw (still compressed) bytes, as
        HDF5's filter pipeline wrote them, without gzip decoding: one plain read for the span
        of neighbouring chunks wherever the file's end of allocation is known (so that a chunk
        HDF5 would refuse to read is refused too), else each chunk read through HDF5."""
        eoa = end_of_allocation(self._file_path)
        if eoa is None:
            return [self._check_direct(ref.where) for ref in batch]
        lo, hi = batch[0].where.offset, batch[-1].where.offset + batch[-1].where.size
        buf = _span_buffer(hi - lo)
        fd = os.open(self._file_path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(buf)[:hi - lo]], lo)
        finally:
            os.close(fd)
        out: list[ChunkCheck] = []
        for place in (ref.where for ref in batch):
            start, end = place.offset - lo, place.offset - lo + place.size
            if place.offset + place.size > eoa:
                out.append((0, "chunk damaged (beyond the file's end)"))
            elif end > got:
                out.append((0, "chunk damaged (file cut short)"))
            else:
                out.append((place.size, _chunk_problem(memoryview(buf)[start:end], place)))
        return out

    def _check_direct(self, place: _Place) -> ChunkCheck:
        """A chunk read through HDF5 (which refuses what lies past its end of allocation)."""
        try:
            raw = place.ds.id.read_direct_chunk(place.position)[1]
        except (OSError, RuntimeError) as e:
            return 0, reason_of(e)
        return len(raw), _chunk_problem(raw, place)

    def get_attrs(self, path: str = "") -> dict[str, Any]:
        node = self._get(path)
        if node is None:
            return {}
        return {k: _decode(v) for k, v in node.attrs.items()}

    def update_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        with self.writing(f"{path or 'root'} attributes", need=_nbytes(
                [json.dumps(v, default=str) for v in attrs.values()])):
            f = self._fw()
            node = f[path] if path else f
            for k, v in attrs.items():
                node.attrs[k] = _encode(v)

    def _delete(self, path: str, chunk: int | None = None) -> None:
        f = self._fw()
        if chunk is None:
            del f[path]
            return
        ds = self._ds(path)  # HDF5 cannot delete a chunk: it is overwritten by the fill value
        chunks = ds.chunks or ds.shape
        lo = chunk * chunks[0]
        if h5py.check_string_dtype(ds.dtype):
            ds[lo:lo + chunks[0]] = np.full(min(chunks[0], ds.shape[0] - lo), "", object)
            return
        # HDF5 reads a chunk before overwriting it, so a damaged one is replaced raw, with
        # every filter marked as skipped for this chunk
        ds.id.write_direct_chunk((lo,) + (0,) * (ds.ndim - 1), _fill_bytes(ds),
                                 filter_mask=0xFFFFFFFF)

    def nbytes_stored(self) -> int:
        return os.path.getsize(self._file_path)  # the working copy inside replacing()

    def flush(self) -> None:
        if self._file is not None and self._mode != "r":
            with self.writing("its data"):
                self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except (OSError, RuntimeError) as e:  # HDF5 flushes on close: as a failed write
            self._abandon()
            raise (write_failure(self.path, "its data", OSError(str(e)))
                   or self._damaged("closing the file", e)) from None
        self._file = None
