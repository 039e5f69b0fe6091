"""Where a store lives: a local path, a local zip, or an fsspec URL (``s3://``, ``gs://``,
``memory://``, ``file://``).

This module is the only place that knows about fsspec. A URL store is opened through zarr's own
:class:`zarr.storage.FsspecStore`; credentials and endpoints come from the usual environment
variables of each filesystem (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) and from
storage options set with :func:`configure` (the CLI's ``--storage-option KEY=VALUE``).

Readers of a URL store may keep a local chunk cache (``--cache-dir``): chunk objects are kept in
a local zarr store, under a namespace per store (its URL and creation time) and per section (its
identity), so a section replaced with other settings is never served from stale chunks.
Metadata and the per-item ``status``/``error`` arrays are never cached: a reader always sees
the store's current progress.

Object stores cannot rename, so a URL store is created "marker last" (see
:func:`eastkd.store.store.create_store`): a store without the ``format`` marker is half-created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlparse

from zarr.abc.store import ByteRequest
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from eastkd.errors import EastkdError

_NEVER_CACHED = ("zarr.json",)
_MUTABLE_ARRAYS = ("status", "error")


@dataclass
class AccessOptions:
    """How URL stores are reached: fsspec storage options and an optional local chunk cache."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None


_access = AccessOptions()


def configure(storage_options: dict[str, Any] | None = None,
              cache_dir: str | None = None) -> None:
    """Set the storage options and chunk cache used for every URL store opened afterwards in
    this process (the CLI calls it from ``--storage-option`` and ``--cache-dir``)."""
    global _access
    _access = AccessOptions(dict(storage_options or {}), cache_dir)


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """URL stores opened inside this block bypass the chunk cache (``verify`` must check the
    bytes the store holds, not a local copy of them)."""
    global _access
    saved = _access
    _access = AccessOptions(dict(saved.storage_options), None)
    try:
        yield
    finally:
        _access = saved


def access_options() -> AccessOptions:
    """The options set by :func:`configure` (e.g. to ship them to distributed workers)."""
    return AccessOptions(dict(_access.storage_options), _access.cache_dir)


def is_url(path: str) -> bool:
    """True for ``scheme://...`` locations other than ``file://`` (which is a local path)."""
    scheme = urlparse(str(path)).scheme
    return "://" in str(path) and len(scheme) > 1 and scheme != "file"


def local_path(path: str) -> str:
    """``file:///a/b.zarr`` -> ``/a/b.zarr``; anything else unchanged."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def absolute(path: str) -> str:
    """A location that means the same from any working directory (for provenance records)."""
    path = str(path)
    return path if is_url(path) else os.path.abspath(local_path(path))


def basename(path: str) -> str:
    """The store's own name (``x.zarr``), for naming files that go beside or after it."""
    return os.path.basename(str(path).rstrip("/"))


def check_remote_kind(path: str) -> None:
    """URL stores are Zarr folders: refuse HDF5 files and zips at URLs with one line."""
    lower = str(path).lower().rstrip("/")
    if lower.endswith((".h5", ".hdf5")):
        raise EastkdError(f"{path}: HDF5 stores must be local files; use a .zarr store for "
                          "object storage (s3://bucket/name.zarr)")
    if lower.endswith(".zip"):
        raise EastkdError(f"{path}: zipped stores must be local files; download it, or share "
                          "the .zarr folder itself at the URL")


def fsspec_store(url: str, read_only: bool) -> ZarrStore:
    """zarr's FsspecStore for ``url`` (with the configured storage options), wrapped in the
    local chunk cache when one is configured and the store is opened for reading."""
    check_remote_kind(url)
    try:
        store: ZarrStore = FsspecStore.from_url(url, storage_options=_access.storage_options,
                                                read_only=read_only)
    except (ImportError, ValueError, TypeError) as e:
        raise _unopenable(url, e) from e
    if read_only and _access.cache_dir:
        store = ChunkCache(store, url, _access.cache_dir)
    return store


def url_exists(url: str) -> bool:
    """True when ``url`` holds anything (a store or the remains of a half-created one)."""
    fs, path = _fs(url)
    try:
        return bool(fs.exists(path))
    except Exception as e:  # the filesystem's own errors (credentials, network) vary by kind
        raise EastkdError(f"{url}: cannot reach it ({type(e).__name__}: {e}); check the "
                          "credentials and --storage-option endpoint_url") from e


def url_nbytes(url: str) -> int:
    """Bytes stored under ``url``."""
    fs, path = _fs(url)
    return int(fs.du(path, total=True))


def _fs(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url, **_access.storage_options)
    except (ImportError, ValueError, TypeError) as e:
        raise _unopenable(url, e) from e


def _unopenable(url: str, e: Exception) -> EastkdError:
    return EastkdError(f"{url}: cannot open this URL ({e}); check the scheme (s3:// needs "
                       "s3fs: pip install 'eastkd[s3]') and the --storage-option values")


class ChunkCache(WrapperStore[ZarrStore]):
    """A read-only store that keeps chunk objects of ``store`` in a local zarr store.

    Keys are namespaced per store (URL and creation time) and per section (its identity
    attribute), so a section recomputed with other settings, or a store recreated at the same
    URL, is read afresh. Metadata and status/error chunks always come from the source.
    """

    def __init__(self, store: ZarrStore, url: str, cache_dir: str) -> None:
        super().__init__(store)
        self._url = url
        self._cache_dir = cache_dir
        self._cache = LocalStore(os.path.join(cache_dir, _sha(url)), read_only=False)
        self._markers: dict[str, Any] = {}

    def _with_store(self, store: ZarrStore) -> "ChunkCache":
        return type(self)(store, self._url, self._cache_dir)

    def with_read_only(self, read_only: bool = False) -> "ChunkCache":
        return self._with_store(self._store.with_read_only(read_only))

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        ckey = None if byte_range is not None else await self._cache_key(key, prototype)
        if ckey is not None:
            hit = await self._cache.get(ckey, prototype)
            if hit is not None:
                return hit
        value = await self._store.get(key, prototype, byte_range)
        if ckey is not None and value is not None:
            await self._cache.set(ckey, value)
        elif value is not None and byte_range is None and key.rsplit("/", 1)[-1] == "zarr.json":
            self._note_marker(key, value)  # metadata read anyway: saves a round trip later
        return value

    def _note_marker(self, key: str, meta: Buffer) -> None:
        group = key[:-len("zarr.json")].rstrip("/")
        if group.count("/") <= 1 and group != "items":
            attrs = json.loads(meta.to_bytes()).get("attributes", {})
            self._markers[group] = attrs.get("identity" if group else "created")

    async def _cache_key(self, key: str, prototype: BufferPrototype) -> str | None:
        """``<namespace>/<key>`` for an immutable chunk, None for what must be read afresh."""
        parts = key.split("/")
        if parts[-1] in _NEVER_CACHED or "c" not in parts:
            return None
        array = parts[:parts.index("c")]
        if not array or array[-1] in _MUTABLE_ARRAYS:
            return None
        owner = "/".join(array[:2]) if array[0] != "items" else ""
        ns = [await self._marker("", "created", prototype)]
        if owner:
            ns.append(await self._marker(owner, "identity", prototype))
        return None if None in ns else f"{_sha([owner, ns])}/{key}"

    async def _marker(self, group: str, attr: str, prototype: BufferPrototype) -> Any:
        """Attribute ``attr`` of ``group`` (read from the source once per open store)."""
        if group not in self._markers:
            meta = await self._store.get(f"{group}/zarr.json" if group else "zarr.json",
                                         prototype)
            attrs = {} if meta is None else json.loads(meta.to_bytes()).get("attributes", {})
            self._markers.setdefault(group, attrs.get(attr))
        return self._markers[group]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]
