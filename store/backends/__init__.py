"""Storage backends behind :class:`eastkd.store.Store`: Zarr v3 (folders, zips, fsspec URLs)
and HDF5 (one file). Only this package imports zarr or h5py."""

from __future__ import annotations

import sys


def must_exit_without_flush() -> bool:
    """Whether a failed write (a full disk) left a file handle that the library would crash
    on when flushing it at interpreter exit; the CLI then exits at once after its message.
    Only backends already in use are asked (nothing is imported for this)."""
    hdf5 = sys.modules.get("eastkd.store.backends.hdf5_backend")
    return hdf5 is not None and hdf5.has_abandoned_files()
