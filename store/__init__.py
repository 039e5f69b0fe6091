"""eastkd's store: the on-disk format (Zarr v3 or HDF5) and the one API that reads and writes it.

Nothing outside this package imports zarr or h5py. See ``docs/store-format.md``.
"""

from eastkd.errors import (
    EastkdError,
    StoreDamageError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreWriteError,
)
from eastkd.store.items import SPLITS, ItemsTable
from eastkd.store.backends import concurrent_writers
from eastkd.store.location import AccessOptions, access_options, is_url
from eastkd.store.location import absolute as store_location
from eastkd.store.location import basename as store_name
from eastkd.store.location import configure as configure_access
from eastkd.store.store import (
    FEATURES,
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
    store_exists,
)

__all__ = [
    "EastkdError", "StoreDamageError", "StoreMismatchError", "StoreNotFoundError",
    "StoreWriteError", "SPLITS", "ItemsTable",
    "FEATURES", "FORMAT_NAME", "FORMAT_VERSION", "OK", "PENDING", "SKIPPED", "ArraySpec",
    "Section", "Store",
    "StoreArray", "backend_name", "concurrent_writers", "chunk_items", "create_store", "eastkd_version",
    "open_for_dataset", "open_store", "store_exists", "AccessOptions", "access_options",
    "configure_access", "is_url", "store_location", "store_name",
]
