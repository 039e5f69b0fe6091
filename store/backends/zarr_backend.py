"""Zarr v3 backend: a directory store (``*.zarr``) or a read-only zip (``*.zip``).

Each chunk is its own object, written atomically by zarr's LocalStore (temp file + rename), so
writers that own whole chunks never lose each other's data and a killed writer leaves either the
old or the new chunk, never half of one. No sharding codec is used (see zarr-python #3682).
Every chunk ends in a crc32c checksum of its compressed bytes (codecs bytes -> zstd -> crc32c);
float arrays have fill value NaN, so a chunk missing from disk reads as NaN and is caught.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Literal

import google_crc32c
import numpy as np
import zarr
import zarr.errors
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, ZipStore

from eastkd.store import location
from eastkd.store.backends.base import ArrayInfo, Backend, ChunkCheck, ChunkRef, is_string_dtype
from eastkd.store.backends.zarr_url import fsspec_store
from eastkd.store.damage import metadata_error
from eastkd.errors import EastkdError, StoreNotFoundError

COMPRESSORS = (ZstdCodec(), Crc32cCodec())
_READ_AHEAD = 4  # local chunk files read and checksummed at once by verify, one a thread
_FETCH_BATCH = 32  # chunks of object storage fetched concurrently by verify, a batch at a time


def _read_file(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def _crc_problem(data: np.ndarray) -> str:
    """"" when the chunk's last 4 bytes are the crc32c of the rest (Zarr's crc32c codec)."""
    if data.size < 4:
        return "chunk damaged (checksum mismatch: too short)"
    stored = int.from_bytes(data[-4:].tobytes(), "little")
    if google_crc32c.value(data[:-4]) != stored:
        return "chunk damaged (checksum mismatch)"
    return ""


def _metadata_problem(raw: bytes | None) -> str | None:
    """What is wrong with the bytes of a ``zarr.json`` (None: nothing; it parses as Zarr v3
    group or array metadata)."""
    from zarr.core.group import GroupMetadata
    from zarr.core.metadata.v3 import ArrayV3Metadata

    if raw is None:
        return "missing"
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return f"not valid JSON: {str(e).splitlines()[0]}"
    if not isinstance(meta, dict) or meta.get("node_type") not in ("array", "group"):
        return "not Zarr v3 metadata (no node_type)"
    try:
        (ArrayV3Metadata if meta["node_type"] == "array" else GroupMetadata).from_dict(
            dict(meta))
    except Exception as e:  # noqa: BLE001 - zarr raises many types for bad metadata
        return f"not valid Zarr metadata ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    return None


class ZarrBackend(Backend):
    name = "zarr"
    concurrent_writers = True  # each chunk is its own object, written atomically
    decode_errors = (Exception,)  # checksum or codec failure: zarr raises many types

    def __init__(self, path: str, mode: str = "r", store: Any = None) -> None:
        """Open the store at ``path`` (a local folder or zip, or a URL); ``store`` is a zarr
        Store to use instead of the one ``path`` names."""
        self.path = path
        self.read_only = mode == "r"
        if store is None and location.is_url(path):
            store = fsspec_store(path, read_only=self.read_only)
        self._arrays: dict[str, zarr.Array] = {}
        if store is not None:
            self._store: Any = store
        elif path.endswith(".zip"):
            if not self.read_only:
                raise EastkdError(
                    f"{path}: zipped stores are read-only; unzip it to a .zarr folder to write"
                )
            self._store = ZipStore(path, mode="r")
        else:
            self._store = LocalStore(path, read_only=self.read_only)
        local = isinstance(self._store, LocalStore)
        self.check_threads, self.check_batch = (_READ_AHEAD, 1) if local else (1, _FETCH_BATCH)
        try:
            # "r+", not "a": opening a folder that holds no store must not write a zarr.json
            # into it (stores are created by create_store, which makes the group first)
            self.root = zarr.open_group(self._store, mode="r" if self.read_only else "r+",
                                        zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreNotFoundError(
                f"{path}: not an eastkd store (no Zarr v3 group here); create one with "
                "`eastkd extract`") from e
        except Exception as e:  # noqa: BLE001 - an unparseable root zarr.json
            raise self._metadata_failure("", e) from None

    @classmethod
    def create(cls, path: str) -> "ZarrBackend":
        """An empty Zarr v3 store (its root group) at ``path``, open for writing."""
        store = fsspec_store(path, read_only=False) if location.is_url(path) else path
        zarr.open_group(store, mode="w", zarr_format=3)
        return cls(path, "a")

    # -- metadata ----------------------------------------------------------------------------
    def _raw(self, key: str) -> bytes | None:
        buf = sync(self._store.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def metadata_problem(self, path: str) -> str | None:
        """What is wrong with the ``zarr.json`` of the node at ``path`` (None: it parses)."""
        try:
            return _metadata_problem(self._raw(f"{path}/zarr.json" if path else "zarr.json"))
        except Exception as e:  # noqa: BLE001 - unreadable object
            return f"unreadable ({type(e).__name__})"

    def _listed(self, path: str) -> list[str]:
        """Names stored directly under ``path`` (whatever their metadata)."""
        prefix = f"{path}/" if path else ""

        async def names() -> list[str]:
            return [k async for k in self._store.list_dir(prefix)]

        try:
            return sorted(n.rstrip("/") for n in sync(names()))
        except Exception:  # noqa: BLE001 - a store that cannot list
            return []

    def _metadata_failure(self, path: str, exc: BaseException) -> Exception:
        """The damage error naming the ``zarr.json`` that made a metadata read of ``path``
        fail: ``path`` itself, one of its parents, or one of its children (a listing)."""
        parts = path.split("/") if path else []
        candidates = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
        candidates += [f"{path}/{c}" if path else c for c in self._listed(path)
                       if c != "zarr.json"]
        for node in candidates:
            problem = self.metadata_problem(node)
            if problem is not None and (problem != "missing" or node in ("", path)):
                return metadata_error(self.path, node, problem)
        return exc if isinstance(exc, EastkdError) else metadata_error(
            self.path, path, f"unreadable ({type(exc).__name__})")

    def orphaned(self, path: str) -> bool:
        """Data under ``path`` without readable metadata. The metadata is read again after the
        listing: another writer creating the same array (concurrent shards) writes its
        ``zarr.json`` first, so a node that was missing a moment ago and now lists that file
        and chunks is being created, not orphaned."""
        if self.metadata_problem(path) is None:
            return False
        stored = [name for name in self._listed(path) if name != "zarr.json"]
        return bool(stored) and self.metadata_problem(path) is not None

    def delete_orphan(self, path: str) -> None:
        self._arrays.pop(path, None)
        with self.writing(path):
            sync(self._store.delete_dir(path))

    def _node(self, path: str) -> Any:
        """The group or array at ``path`` (None if absent); damaged metadata is one line."""
        try:
            return self.root if not path else self.root.get(path)
        except Exception as e:  # noqa: BLE001 - unparseable zarr.json: zarr raises many types
            raise self._metadata_failure(path, e) from None

    # -- structure -------------------------------------------------------------------------
    def create_group(self, path: str, attrs: dict[str, Any] | None = None) -> None:
        # one zarr.json holding the attributes, written atomically: concurrent openers never
        # see the group without its attributes
        with self.writing(path):
            try:
                self.root.create_group(path, attributes=attrs or {}, overwrite=False)
            except zarr.errors.ContainsGroupError:
                if attrs:
                    self.root[path].attrs.update(attrs)

    def create_array(self, path, shape, chunks, dtype, attrs=None, data=None, dims=None) -> None:
        if is_string_dtype(dtype):
            dtype, fill = str, ""
        else:
            dtype = np.dtype(dtype)
            fill = np.nan if dtype.kind == "f" else 0
        with self.writing(path):
            try:
                arr = self.root.create_array(
                    path, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
                    fill_value=fill, compressors=COMPRESSORS, attributes=attrs or {},
                    dimension_names=tuple(dims) if dims else None, overwrite=False,
                )
            except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError) as e:
                raise FileExistsError(path) from e
            if data is not None:
                arr[...] = data

    def kind(self, path: str) -> Literal["array", "group"] | None:
        if path in self._arrays:
            return "array"
        node = self._node(path)
        return None if node is None else "array" if isinstance(node, zarr.Array) else "group"

    def children(self, path: str) -> list[str]:
        node = self._node(path)
        if not isinstance(node, zarr.Group):
            return []
        try:
            return sorted(k for k, _ in node.members())
        except Exception as e:  # noqa: BLE001 - a child's zarr.json does not parse
            raise self._metadata_failure(path, e) from None

    def _arr(self, path: str) -> zarr.Array:
        """The array at ``path``; its metadata is read once (shape, chunks and codecs never
        change after creation; attributes are always read fresh by get_attrs)."""
        # one cache of array handles while the store is open: on object storage every metadata
        # read is a round trip, and reads go block by block
        if path not in self._arrays:
            self._arrays[path] = self._open_array(path)
        return self._arrays[path]

    def _open_array(self, path: str) -> zarr.Array:
        node = self._node(path)
        if node is None and self.orphaned(path):
            raise metadata_error(self.path, path, "missing")
        if not isinstance(node, zarr.Array):
            raise EastkdError(f"{self.path}: no array {path!r} in this store")
        return node

    def info(self, path: str) -> ArrayInfo:
        arr = self._arr(path)
        dt = arr.dtype
        # checksummed: each chunk's last 4 bytes are a crc32c of the rest (the last codec)
        crc = bool(arr.compressors) and isinstance(arr.compressors[-1], Crc32cCodec)
        return ArrayInfo(tuple(arr.shape), np.dtype(object) if dt.kind == "T" else np.dtype(dt),
                         tuple(arr.chunks), arr.fill_value, crc)

    def _read_raw(self, path: str, selection: Any) -> np.ndarray:
        out = self._arr(path)[selection]
        if isinstance(out, np.ndarray) and out.dtype.kind == "T":
            return out.astype(object)
        return out

    def write(self, path, selection, value) -> None:
        with self.writing(path):
            self._arr(path)[selection] = value

    def _stored_chunk_refs(self, path: str) -> list[ChunkRef]:
        """Each chunk key under ``path``, checked in the order of the keys."""
        prefix = f"{path}/c/"

        async def keys() -> list[str]:  # zips may list their folders too ("a/c/1/")
            return [k async for k in self._store.list_prefix(prefix) if not k.endswith("/")]

        return [ChunkRef(path, int(k[len(prefix):].split("/")[0]), k, k) for k in sync(keys())]

    def _check_chunk_batch(self, batch: list[ChunkRef]) -> list[ChunkCheck]:
        """Local chunk files read plainly (plain reads and crc32c run outside the GIL, as fast
        as the disk), one a batch; otherwise concurrent gets through the zarr store."""
        if isinstance(self._store, LocalStore):
            root = str(self._store.root)
            data = [_read_file(os.path.join(root, ref.where)) for ref in batch]
        else:
            proto = default_buffer_prototype()

            async def fetch() -> list[Any]:
                return await asyncio.gather(*(self._store.get(ref.where, prototype=proto)
                                              for ref in batch))

            data = [np.empty(0, np.uint8) if buf is None else buf.as_numpy_array()
                    for buf in sync(fetch())]
        return [(d.size, _crc_problem(d)) for d in data]

    def get_attrs(self, path: str = "") -> dict[str, Any]:
        node = self._node(path)
        if node is None:
            return {}
        return dict(node.attrs.asdict())

    def update_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        node = self._node(path)
        with self.writing(f"{path or 'root'} attributes"):
            node.attrs.update(attrs)

    def _delete(self, path: str, chunk: int | None = None) -> None:
        if chunk is not None:  # absent, a chunk reads as the fill value
            arr = self._arr(path)
            sync(self._store.delete(
                f"{path}/" + arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))))
            return
        self._arrays.clear()
        if self._node(path) is not None:
            del self.root[path]

    def close(self) -> None:
        if isinstance(self._store, ZipStore):
            self._store.close()
