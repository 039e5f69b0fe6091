"""Storage backends behind :class:`eastkd.store.Store`: Zarr v3 (folders, zips, fsspec URLs)
and HDF5 (one file). Only this package imports zarr or h5py: the rest of the store opens and
creates stores through :func:`open_backend` and asks capabilities such as
:func:`must_exit_without_flush` rather than naming a backend."""

from __future__ import annotations

from eastkd.store import location
from eastkd.store.backends.base import Backend

_HDF5_SUFFIXES = (".h5", ".hdf5")


def backend_name(path: str) -> str:
    """``"hdf5"`` for a ``.h5``/``.hdf5`` file, else ``"zarr"`` (folders, zips, URLs)."""
    return "hdf5" if str(path).lower().rstrip("/").endswith(_HDF5_SUFFIXES) else "zarr"


def _backend_class(path: str) -> type[Backend]:
    if backend_name(path) == "hdf5" and not location.is_url(path):
        from eastkd.store.backends.hdf5_backend import HDF5Backend

        return HDF5Backend
    from eastkd.store.backends.zarr_backend import ZarrBackend

    return ZarrBackend


def open_backend(path: str, mode: str = "r", create: bool = False) -> Backend:
    """The backend for the store at ``path`` (a local path, a ``file://`` path or a URL),
    opened with ``mode``; ``create`` makes a new, empty store there instead (see
    :meth:`Backend.create`)."""
    if not location.is_url(path):
        path = location.local_path(path)
    cls = _backend_class(path)
    return cls.create(path) if create else cls(path, mode)  # type: ignore[call-arg]


def concurrent_writers(path: str) -> bool:
    """Whether several processes may write the store at ``path`` at once, each owning whole
    chunks (``extract --shard`` and ``--dask`` need it)."""
    return _backend_class(path).concurrent_writers


def must_exit_without_flush() -> bool:
    """Whether a failed write (a full disk) left a file handle that the library would crash
    on when flushing it at interpreter exit; the CLI then exits at once after its message.
    Only backends already in use are asked (nothing is imported for this)."""
    return any(cls.abandoned_files() for cls in Backend.__subclasses__())
