"""Turn a dataset into the store's items table: hash every file and read its duration."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from eastkd.pipeline.audio import AudioError, duration_seconds, read_bytes
from eastkd.pipeline.datasets.base import DatasetSpec
from eastkd.store import ItemsTable

MISSING = "missing"


def build_items_table(spec: DatasetSpec, progress: bool = True) -> ItemsTable:
    """Items table of ``spec``; an unreadable file gets sha256 ``"missing"`` (extract says so)."""
    n = len(spec.items)
    c = len(spec.class_names)
    labels = np.zeros((n, max(c, 1)), dtype=np.uint8)
    sha, durations = [], np.full(n, np.nan, dtype=np.float32)
    for i, item in enumerate(tqdm(spec.items, desc="indexing", unit="file", disable=not progress,
                                  leave=False)):
        try:
            _, digest = read_bytes(item.path)
        except AudioError:
            digest = MISSING
        sha.append(digest)
        durations[i] = duration_seconds(item.path)
        labels[i, item.labels] = 1
    extra_keys = sorted({k for it in spec.items for k in it.extra})
    extra = {k: np.asarray([it.extra.get(k) for it in spec.items]) for k in extra_keys}
    return ItemsTable(
        ids=[it.id for it in spec.items],
        paths=[it.path for it in spec.items],
        sha256=sha,
        durations=durations,
        splits=[it.split for it in spec.items],
        labels=labels,
        class_names=list(spec.class_names),
        multi_label=bool(spec.multi_label),
        extra=extra,
    )
