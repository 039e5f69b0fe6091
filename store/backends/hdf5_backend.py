"""HDF5 backend (``*.h5``, ``*.hdf5``) via h5py, with the same logical layout as Zarr.

Attributes that are not plain scalars or strings are stored as JSON strings (prefix ``json:``)
so that any h5py reader can see them. Strings are variable-length UTF-8. The file is opened
lazily (on first use) so that an object made before a DataLoader forks opens its own handle in
each worker: h5py handles do not survive fork. HDF5 has no safe concurrent writers, so sharded
extraction is Zarr only.
"""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from eastkd.store.backends.base import Backend, is_string_dtype
from eastkd.store.errors import EastkdError

_STR = h5py.string_dtype("utf-8")


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


class HDF5Backend(Backend):
    name = "hdf5"

    def __init__(self, path: str, mode: str = "r") -> None:
        self.path = path
        self.read_only = mode == "r"
        self._mode = "r" if self.read_only else "a"
        self._file: h5py.File | None = None
        self._pid = -1
        self._f()  # fail early on a bad path

    def _f(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, self._mode)
            except OSError as e:
                raise EastkdError(f"{self.path}: cannot open as HDF5 ({e})") from e
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def create_group(self, path: str, attrs: dict[str, Any] | None = None) -> None:
        g = self._f().require_group(path)
        for k, v in (attrs or {}).items():
            g.attrs[k] = _encode(v)

    def create_array(self, path, shape, chunks, dtype, attrs=None, data=None) -> None:
        f = self._f()
        if path in f:
            raise FileExistsError(path)
        string = is_string_dtype(dtype)
        chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))
        ds = f.create_dataset(
            path, shape=tuple(shape), chunks=chunks if all(shape) else None,
            dtype=_STR if string else np.dtype(dtype),
            compression=None if string else "gzip", compression_opts=None if string else 4,
            shuffle=not string and all(shape),
        )
        for k, v in (attrs or {}).items():
            ds.attrs[k] = _encode(v)
        if data is not None:
            ds[...] = data

    def exists(self, path: str) -> bool:
        return path in self._f()

    def is_array(self, path: str) -> bool:
        return isinstance(self._f().get(path), h5py.Dataset)

    def children(self, path: str) -> list[str]:
        node = self._f().get(path) if path else self._f()
        return sorted(node.keys()) if isinstance(node, h5py.Group) else []

    def _ds(self, path: str) -> h5py.Dataset:
        node = self._f().get(path)
        if not isinstance(node, h5py.Dataset):
            raise EastkdError(f"{self.path}: no array {path!r} in this store")
        return node

    def shape(self, path):
        return tuple(self._ds(path).shape)

    def dtype(self, path):
        ds = self._ds(path)
        return np.dtype(object) if h5py.check_string_dtype(ds.dtype) else ds.dtype

    def chunks(self, path):
        return tuple(self._ds(path).chunks or self._ds(path).shape)

    def read(self, path, selection=slice(None)):
        ds = self._ds(path)
        if h5py.check_string_dtype(ds.dtype):
            return np.asarray(ds.asstr()[selection], dtype=object)
        return ds[selection]

    def write(self, path, selection, value) -> None:
        self._ds(path)[selection] = value

    def get_attrs(self, path: str = "") -> dict[str, Any]:
        node = self._f().get(path) if path else self._f()
        if node is None:
            return {}
        return {k: _decode(v) for k, v in node.attrs.items()}

    def update_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        node = self._f()[path] if path else self._f()
        for k, v in attrs.items():
            node.attrs[k] = _encode(v)

    def delete(self, path: str) -> None:
        f = self._f()
        if path in f:
            del f[path]

    def nbytes_stored(self) -> int:
        return os.path.getsize(self.path)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def native(self, path: str) -> h5py.Dataset:
        return self._ds(path)
