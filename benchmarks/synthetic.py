"""A synthetic store sorted by class, of any size, for the read path's tests and benchmark.

Items are laid out split by split (train, then valid, then test) and, within a split, class by
class, as a dataset of class folders is: the worst case for a reader that shuffles only nearby
rows. Inputs are float16 "log-mels" whose mean depends on the class (so a student can learn
them); ``embeddings/synth/clip`` holds float16 teacher embeddings with a class signal. Data are
generated and written one chunk at a time, so a store many times the memory is cheap to make.
"""

from __future__ import annotations

import hashlib

import numpy as np

from eastkd.store import OK, ArraySpec, ItemsTable, create_store

KEY = "synth"
SPLIT_FRACTIONS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))


def synthetic_items(n_items: int, n_classes: int, unlabelled_every: int = 0) -> ItemsTable:
    """Items table: splits in blocks (80/10/10), classes sorted inside each split; with
    ``unlabelled_every`` k, every k-th train item is unlabelled (no labels, KD only)."""
    splits, labels = [], []
    start = 0
    for i, (split, frac) in enumerate(SPLIT_FRACTIONS):
        stop = n_items if i == len(SPLIT_FRACTIONS) - 1 else start + int(round(frac * n_items))
        k = stop - start
        splits += [split] * k
        labels.append(np.arange(k) * n_classes // max(1, k))
        start = stop
    y = np.concatenate(labels)
    ids = [f"item{i:07d}" for i in range(n_items)]
    labelled = np.ones(n_items, dtype=bool)
    if unlabelled_every:
        labelled[np.flatnonzero(np.asarray(splits) == "train")[::unlabelled_every]] = False
    return ItemsTable(
        ids=ids, paths=[f"/synthetic/{i}.wav" for i in ids],
        sha256=[hashlib.sha256(i.encode()).hexdigest() for i in ids],
        durations=np.ones(n_items, np.float32), splits=splits,
        labels=np.eye(n_classes, dtype=np.uint8)[y] * labelled[:, None],
        class_names=[f"class{c:02d}" for c in range(n_classes)], labelled=labelled)


def make_synthetic_store(path: str, n_items: int, n_classes: int = 10, n_mels: int = 32,
                         n_frames: int = 32, target_dim: int = 64, chunk_items: int = 64,
                         seed: int = 0, unlabelled_every: int = 0) -> str:
    """Write a class-sorted store with features/logmel and embeddings/synth; return ``path``.

    ``chunk_items`` (a power of two) caps the chunk size along items of every array;
    ``unlabelled_every`` makes every k-th train item unlabelled (same data as without).
    """
    items = synthetic_items(n_items, n_classes, unlabelled_every)
    y = synthetic_items(n_items, n_classes).label  # the data's classes, labelled or not
    rng = np.random.default_rng(seed)
    class_mels = rng.normal(size=(n_classes, n_mels, 1)).astype(np.float32)
    class_emb = rng.normal(size=(n_classes, target_dim)).astype(np.float32)
    with create_store(path, items, {"name": "synthetic", "source": "synthetic"}
                      ) as store:
        feat = store.require_section(
            "features", "logmel", {"values": ArraySpec((n_mels, n_frames), "float16")},
            attrs={"kind": "log-mel (synthetic)", "params": {"n_mels": n_mels},
                   "segment": {"frames": n_frames}},
            identity={"synthetic": seed}, max_chunk_items=chunk_items)
        emb = store.require_section(
            "embeddings", KEY, {"clip": ArraySpec((target_dim,), "float16")},
            attrs={"teacher": "synthetic"}, identity={"synthetic": seed},
            max_chunk_items=chunk_items)
        step = max(feat.unit, emb.unit)
        for start in range(0, n_items, step):
            c = y[start:start + step]
            k = len(c)
            x = class_mels[c] + rng.normal(size=(k, n_mels, n_frames)).astype(np.float32)
            t = class_emb[c] + 0.5 * rng.normal(size=(k, target_dim)).astype(np.float32)
            ok = np.full(k, OK, np.uint8)
            feat.write_block(start, {"values": x.astype(np.float16)}, ok)
            emb.write_block(start, {"clip": t.astype(np.float16)}, ok)
    return path
