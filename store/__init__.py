"""eastkd's store: the on-disk format (Zarr v3 or HDF5) and the one API that reads and writes it.

Nothing outside this package imports zarr or h5py. See ``docs/store-format.md``.
"""

from eastkd.store.errors import (
    EastkdError,
    StoreDamageError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreWriteError,
)
from eastkd.store.items import SPLITS, ItemsTable
from eastkd.store.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    OK,
    PENDING,
    SKIPPED,
    ArraySpec,
    Section,
    Store,
    StoreArray,
    backend_name,
    chunk_items,
    create_store,
    eastkd_version,
    open_for_dataset,
    open_store,
)

__all__ = [
    "EastkdError", "StoreDamageError", "StoreMismatchError", "StoreNotFoundError",
    "StoreWriteError", "SPLITS", "ItemsTable",
    "FORMAT_NAME", "FORMAT_VERSION", "OK", "PENDING", "SKIPPED", "ArraySpec", "Section", "Store",
    "StoreArray", "backend_name", "chunk_items", "create_store", "eastkd_version",
    "open_for_dataset", "open_store",
]
