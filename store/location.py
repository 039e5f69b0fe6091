"""Where a store lives: a local path, a local zip, or an fsspec URL (``s3://``, ``gs://``,
``memory://``, ``file://``).

This module knows where a store is and how URL stores are reached; it imports neither zarr nor
h5py. A URL store is opened through zarr's own :class:`zarr.storage.FsspecStore` (made in
:mod:`eastkd.store.backends.zarr_url`); credentials and endpoints come from the usual environment
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
import os
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlparse

from eastkd.errors import EastkdError


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
        raise unopenable(url, e) from e


def unopenable(url: str, e: Exception) -> EastkdError:
    return EastkdError(f"{url}: cannot open this URL ({e}); check the scheme (s3:// needs "
                       "s3fs: pip install 'eastkd[s3]') and the --storage-option values")
