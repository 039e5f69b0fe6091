"""The PCA fit as a tree reduction on a dask.distributed cluster (``compress --dask``).

Each task reads one chunk of the embeddings straight from the store (on its worker) and returns
the float64 moments of the fit rows in it: count, mean and centred scatter matrix. Moments are
merged pairwise up a tree (``fan_in`` at a time) with Chan et al.'s update, the same merge the
streaming fit of :class:`~eastkd.pipeline.compress.pca.PCACompressor` does chunk after chunk, so
the components equal the in-process fit's to numerical precision. The client only schedules and
receives the final D x D matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eastkd.pipeline.compress.pca import PCACompressor
from eastkd.store import (
    AccessOptions,
    EastkdError,
    access_options,
    configure_access,
    open_store,
    store_location,
)

Moments = tuple[int, np.ndarray, np.ndarray]  # (rows, mean, centred scatter)
FAN_IN = 8


def fit_on_cluster(comp: PCACompressor, store_path: str, section: str, array: str,
                   rows: np.ndarray, cluster: Any, fan_in: int = FAN_IN,
                   views: bool = False) -> PCACompressor:
    """Fit ``comp`` on rows ``rows`` of ``<section>/<array>`` with one task per chunk that holds
    fit rows; ``cluster`` is ``local:N``, a scheduler address or a connected Client. With
    ``views`` (an items x K x D array) every view of a fit item is one fit row."""
    from eastkd.pipeline.extract.distributed import dask_client

    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size < 2:
        raise EastkdError(f"PCA needs at least 2 fit rows, got {rows.size}")
    kind, name = section.split("/", 1)
    with open_store(store_path) as store:
        source = store.section(kind, name).array(array)
        n_items, step = source.shape[0], int(source.chunks[0])
    blocks = []
    for start in range(0, n_items, step):
        lo, hi = np.searchsorted(rows, [start, min(n_items, start + step)])
        if hi > lo:
            blocks.append((start, min(n_items, start + step), rows[lo:hi]))
    access = access_options()
    with dask_client(cluster) as client:
        where = store_location(store_path)  # workers may run in other folders
        parts = [client.submit(_chunk_moments, where, kind, name, array, *block, access,
                               views, pure=False, retries=2) for block in blocks]
        while len(parts) > 1:
            parts = [client.submit(_merge, *parts[i:i + fan_in], pure=False, retries=2)
                     if len(parts[i:i + fan_in]) > 1 else parts[i]
                     for i in range(0, len(parts), fan_in)]
        n, mean, scatter = parts[0].result()
    comp.fit_moments(mean, scatter, n)
    return comp


def _chunk_moments(store_path: str, kind: str, name: str, array: str, start: int, stop: int,
                   rows: np.ndarray, access: AccessOptions, views: bool = False) -> Moments:
    """A task: the moments of ``rows`` (all within ``start:stop``) read from the store (with
    ``views``, of every view of those rows)."""
    configure_access(access.storage_options, access.cache_dir)
    with open_store(store_path) as store:
        block = store.section(kind, name).array(array)[start:stop][rows - start]
    x = block.reshape(-1, block.shape[-1]) if views else block.reshape(len(block), -1)
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    x -= mean
    return x.shape[0], mean, x.T @ x


def _merge(*parts: Moments) -> Moments:
    """Moments of the union of the parts' rows (pairwise, Chan et al.)."""
    n, mean, scatter = parts[0]
    scatter = scatter.copy()
    for k, m, s in parts[1:]:
        total = n + k
        delta = m - mean
        scatter += s + np.outer(delta, delta) * (n * k / total)
        mean = mean + delta * (k / total)
        n = total
    return n, mean, scatter
