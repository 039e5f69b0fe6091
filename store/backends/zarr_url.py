"""URL stores for the Zarr backend: zarr's :class:`~zarr.storage.FsspecStore` for a URL (with the
storage options set by :func:`eastkd.store.location.configure`) and :class:`ChunkCache`, the
optional local chunk cache of readers (``--cache-dir``); see :mod:`eastkd.store.location`."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from eastkd.store import location

_NEVER_CACHED = ("zarr.json",)
_MUTABLE_ARRAYS = ("status", "error")


def fsspec_store(url: str, read_only: bool) -> ZarrStore:
    """zarr's FsspecStore for ``url`` (with the configured storage options), wrapped in the
    local chunk cache when one is configured and the store is opened for reading."""
    location.check_remote_kind(url)
    access = location.access_options()
    try:
        store: ZarrStore = FsspecStore.from_url(url, storage_options=access.storage_options,
                                                read_only=read_only)
    except (ImportError, ValueError, TypeError) as e:
        raise location.unopenable(url, e) from e
    if read_only and access.cache_dir:
        store = ChunkCache(store, url, access.cache_dir)
    return store



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
