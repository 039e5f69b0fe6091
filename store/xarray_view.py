"""A store section as an ``xarray.Dataset`` with the items' ids, labels and splits attached.

``xarray.open_zarr(STORE, group="embeddings/KEY", consolidated=False)`` opens a group with its
named dimensions but knows nothing of the items table; :func:`section_dataset` (behind
:meth:`eastkd.store.Store.to_xarray`) adds it as coordinates, for Zarr, zipped, remote and
HDF5 stores alike, with the arrays read lazily through eastkd's checked reads (dask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from eastkd.errors import EastkdError

if TYPE_CHECKING:
    from eastkd.store.items import ItemsTable
    from eastkd.store.store import Store


def item_coordinates(items: ItemsTable) -> dict[str, Any]:
    """``item`` (ids), ``split``, ``label`` (class name; "" without exactly one label) or, for
    multi-label data, ``labels`` (item x class, with ``class`` names), and the extra columns."""
    coords: dict[str, Any] = {
        "item": ("item", np.asarray(items.ids, dtype=str)),
        "split": ("item", np.asarray(items.splits, dtype=str)),
    }
    names = np.asarray(list(items.class_names) + [""], dtype=str)
    if items.multi_label:
        coords["labels"] = (("item", "class"), np.asarray(items.labels, dtype=np.uint8))
        coords["class"] = ("class", names[:-1])
    else:
        coords["label"] = ("item", names[items.label])  # -1 -> ""
    for name, column in items.extra.items():
        if np.ndim(column) == 1 and len(column) == len(items):
            coords[name] = ("item", np.asarray(column))
    return coords


def section_dataset(store: Store, section: str) -> Any:
    """The section ``KIND/NAME`` (e.g. ``embeddings/crepe-tiny``) as a lazy Dataset: its
    numeric arrays and ``status`` with their dimension names, the items as coordinates, the
    section's attributes (provenance) as ``attrs``."""
    try:
        import xarray as xr
    except ImportError:
        raise EastkdError("to_xarray needs xarray: pip install xarray") from None
    from eastkd.store.store import SECTION_KINDS, dimension_names

    kind, _, name = section.partition("/")
    if kind not in SECTION_KINDS or not name:
        raise EastkdError(f"{store.path}: {section!r} is no section; expected KIND/NAME with "
                          f"KIND one of {', '.join(SECTION_KINDS)} (e.g. embeddings/crepe-tiny)")
    sec = store.section(kind, name)
    data_vars = {}
    for array_name in [*sec.array_names(), "status"]:
        array = sec.array(array_name)
        if array.dtype.kind in "OSUT":  # strings (error reasons) stay in the store
            continue
        dims = dimension_names(kind, array_name, array.ndim - 1)
        data_vars[array_name] = (dims, array.to_dask())
    return xr.Dataset(data_vars, coords=item_coordinates(store.items), attrs=dict(sec.attrs))
