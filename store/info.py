"""A summary of what a store holds, as plain JSON-able data (``eastkd info``)."""

from __future__ import annotations

from typing import Any

from eastkd.store.digest import store_digest
from eastkd.store.store import SECTION_KINDS, Store


def _section_summary(store: Store, kind: str, name: str) -> dict[str, Any]:
    sec = store.section(kind, name)
    attrs = dict(sec.attrs)
    arrays = {}
    for a in sec.array_names():
        arr = sec.array(a)
        arrays[a] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                     "chunks": list(arr.chunks)}
    counts = sec.counts()
    return {
        "arrays": arrays,
        "status": counts,
        "complete": counts["pending"] == 0,
        "skipped": [{"id": i, "reason": r} for i, r in sec.skipped()],
        "attrs": {k: v for k, v in attrs.items() if k != "identity"},
        "identity": attrs.get("identity"),
    }


def describe(store: Store) -> dict[str, Any]:
    """Items, splits (with their labelled and unlabelled items), classes, every section with
    its status and provenance, bytes on disk."""
    items = store.items
    attrs = store.attrs
    label_counts = items.labels.sum(axis=0).tolist()
    out: dict[str, Any] = {
        "path": store.path,
        "backend": store.backend_name,
        "format": attrs.get("format"),
        "format_version": attrs.get("format_version"),
        "eastkd_version": attrs.get("eastkd_version"),
        "created": attrs.get("created"),
        "dataset": attrs.get("dataset", {}),
        "items": len(items),
        "splits": items.split_counts(),
        "labelled": {s: c["labelled"] for s, c in items.labelled_counts().items()},
        "unlabelled": {s: c["unlabelled"] for s, c in items.labelled_counts().items()},
        "multi_label": items.multi_label,
        "classes": {n: int(c) for n, c in zip(items.class_names, label_counts)},
        "extra_columns": sorted(items.extra),
        "bytes_on_disk": store.nbytes_stored(),
    }
    for kind in SECTION_KINDS:
        out[kind] = {name: _section_summary(store, kind, name)
                     for name in store.section_names(kind) if store.has_section(kind, name)}
    d = store_digest(store)  # from the recorded chunk digests: `verify` checks the content
    out.update(digest=d.digest, digest_sections=d.sections, digest_note=d.note)
    return out
