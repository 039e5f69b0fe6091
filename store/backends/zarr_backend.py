"""Zarr v3 backend: a directory store (``*.zarr``) or a read-only zip (``*.zip``).

Each chunk is its own object, written atomically by zarr's LocalStore (temp file + rename), so
writers that own whole chunks never lose each other's data and a killed writer leaves either the
old or the new chunk, never half of one. No sharding codec is used (see zarr-python #3682).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.storage import LocalStore, ZipStore

from eastkd.store.backends.base import Backend, is_string_dtype
from eastkd.store.errors import EastkdError, StoreNotFoundError


def _du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


class ZarrBackend(Backend):
    name = "zarr"

    def __init__(self, path: str, mode: str = "r", store: Any = None) -> None:
        """Open the store at ``path``; ``store`` is a zarr Store to use instead of a local
        folder or zip (a URL store, made by :mod:`eastkd.store.location`)."""
        self.path = path
        self.read_only = mode == "r"
        self._remote = store is not None
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
        try:
            # "r+", not "a": opening a folder that holds no store must not write a zarr.json
            # into it (stores are created by create_store, which makes the group first)
            self.root = zarr.open_group(self._store, mode="r" if self.read_only else "r+",
                                        zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreNotFoundError(
                f"{path}: not an eastkd store (no Zarr v3 group here); create one with "
                "`eastkd extract`") from e

    # -- structure -------------------------------------------------------------------------
    def create_group(self, path: str, attrs: dict[str, Any] | None = None) -> None:
        # one zarr.json holding the attributes, written atomically: concurrent openers never
        # see the group without its attributes
        try:
            self.root.create_group(path, attributes=attrs or {}, overwrite=False)
        except zarr.errors.ContainsGroupError:
            if attrs:
                self.root[path].attrs.update(attrs)

    def create_array(self, path, shape, chunks, dtype, attrs=None, data=None) -> None:
        if is_string_dtype(dtype):
            dtype, fill = str, ""
        else:
            dtype, fill = np.dtype(dtype), 0
        try:
            arr = self.root.create_array(
                path, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill,
                attributes=attrs or {}, overwrite=False,
            )
        except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError) as e:
            raise FileExistsError(path) from e
        if data is not None:
            arr[...] = data

    def exists(self, path: str) -> bool:
        return path in self._arrays or path in self.root

    def is_array(self, path: str) -> bool:
        return isinstance(self.root.get(path), zarr.Array)

    def children(self, path: str) -> list[str]:
        node = self.root.get(path) if path else self.root
        if not isinstance(node, zarr.Group):
            return []
        return sorted(k for k, _ in node.members())

    def _arr(self, path: str) -> zarr.Array:
        # array handles are kept while the store is open: on object storage every metadata
        # read is a round trip, and reads go block by block
        node = self._arrays.get(path) or self.root.get(path)
        if not isinstance(node, zarr.Array):
            raise EastkdError(f"{self.path}: no array {path!r} in this store")
        self._arrays[path] = node
        return node

    def shape(self, path):
        return tuple(self._arr(path).shape)

    def dtype(self, path):
        dt = self._arr(path).dtype
        return np.dtype(object) if dt.kind == "T" else np.dtype(dt)

    def chunks(self, path):
        return tuple(self._arr(path).chunks)

    def read(self, path, selection=slice(None)):
        out = self._arr(path)[selection]
        if isinstance(out, np.ndarray) and out.dtype.kind == "T":
            out = out.astype(object)
        return out

    def write(self, path, selection, value) -> None:
        self._arr(path)[selection] = value

    def get_attrs(self, path: str = "") -> dict[str, Any]:
        node = self.root if not path else self.root.get(path)
        if node is None:
            return {}
        return dict(node.attrs.asdict())

    def update_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        node = self.root if not path else self.root[path]
        node.attrs.update(attrs)

    def delete(self, path: str) -> None:
        self._arrays = {k: v for k, v in self._arrays.items()
                        if k != path and not k.startswith(f"{path}/")}
        if path in self.root:
            del self.root[path]

    def nbytes_stored(self) -> int:
        if self._remote:
            from eastkd.store.location import url_nbytes

            return url_nbytes(self.path)
        if self.path.endswith(".zip"):
            return os.path.getsize(self.path)
        return _du(self.path)

    def close(self) -> None:
        if isinstance(self._store, ZipStore):
            self._store.close()

    def native(self, path: str) -> zarr.Array:
        return self._arr(path)
