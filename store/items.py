"""The items table: what every row of every array in a store refers to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "valid", "test")


def _split_order(name: str) -> tuple[int, str]:
    return (SPLITS.index(name) if name in SPLITS else len(SPLITS), name)


def short_list(names: list[str], most: int = 8) -> str:
    """``a, b, c`` or ``a, b, ... (12 in all)``: a list that stays one short line."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most - 1])}, ... ({len(names)} in all)"


@dataclass(repr=False)
class ItemsTable:
    """Per-item columns, aligned with the first axis of every array in the store.

    ``labels`` is an (N, C) uint8 multi-hot matrix for both single- and multi-label data;
    :attr:`label` gives the single-label class index (-1 where an item has no single label).
    ``extra`` holds adapter-specific columns (e.g. ``fold``), one value per item.
    ``labelled`` (bool per item; all True when not given) marks the items that carry labels:
    an unlabelled item (a train item whose labels row is all zero) serves the KD loss only.
    A multi-label item with no positive tag is labelled (a negative for every class).
    """

    ids: list[str]
    paths: list[str]
    sha256: list[str]
    durations: np.ndarray
    splits: list[str]
    labels: np.ndarray
    class_names: list[str]
    multi_label: bool = False
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    labelled: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        mask = np.ones(n, dtype=bool) if self.labelled is None else \
            np.asarray(self.labelled, dtype=bool).reshape(-1)
        if len(mask) != n:
            raise ValueError(f"labelled has {len(mask)} values for {n} items")
        self.labelled = mask

    @property
    def labelled_mask(self) -> np.ndarray:
        """``labelled`` as a bool array (never None after construction)."""
        assert self.labelled is not None
        return self.labelled

    @property
    def has_unlabelled(self) -> bool:
        """Whether any item is unlabelled (the store then records the ``labelled`` column in
        its checksum and fingerprint)."""
        return not bool(self.labelled_mask.all())

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        """Counts, classes and splits in one line, never the ids (hundreds of lines)."""
        return f"<ItemsTable: {self.summary()}>"

    def summary(self) -> str:
        """``60 items, 5 classes (brass, ...), single-label; train 42, valid 9, test 9``."""
        kind = "multi-label" if self.multi_label else "single-label"
        splits = ", ".join(f"{k} {v}" for k, v in self.split_counts().items())
        extra = f"; columns {short_list(list(self.extra))}" if self.extra else ""
        return (f"{len(self)} items, {len(self.class_names)} classes "
                f"({short_list(list(self.class_names))}), {kind}; {splits or 'no splits'}{extra}")

    @property
    def label(self) -> np.ndarray:
        """Single-label class index per item; -1 for rows without exactly one label."""
        out = np.argmax(self.labels, axis=1).astype(np.int32)
        out[self.labels.sum(axis=1) != 1] = -1
        return out

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices of one split, in store order."""
        return np.flatnonzero(np.asarray(self.splits, dtype=object) == split)

    def split_counts(self) -> dict[str, int]:
        """Items per split, train, valid and test first."""
        names, counts = np.unique(np.asarray(self.splits, dtype=str), return_counts=True)
        return {str(n): int(c) for n, c in sorted(zip(names, counts),
                                                  key=lambda nc: _split_order(str(nc[0])))}

    def labelled_counts(self) -> dict[str, dict[str, int]]:
        """Per split: ``{"labelled": n, "unlabelled": m}``."""
        splits = np.asarray(self.splits, dtype=str)
        mask = self.labelled_mask
        return {s: {"labelled": int((mask & (splits == s)).sum()),
                    "unlabelled": int((~mask & (splits == s)).sum())}
                for s in self.split_counts()}

    def fingerprint(self) -> str:
        """sha256 over ids, file hashes, splits, labels and class names: the dataset's identity."""
        payload = {
            "ids": list(self.ids),
            "sha256": list(self.sha256),
            "splits": list(self.splits),
            "labels": self._label_lists(),
            "class_names": list(self.class_names),
            "multi_label": bool(self.multi_label),
        }
        if self.has_unlabelled:  # absent otherwise: fully labelled datasets keep their identity
            payload["unlabelled"] = np.flatnonzero(~self.labelled_mask).tolist()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _label_lists(self) -> list[list[int]]:
        """Class indices per item (``[np.flatnonzero(row).tolist() for row in labels]``, in one
        pass: a Python loop over numpy rows costs seconds per million items)."""
        labels = np.asarray(self.labels).reshape(len(self.ids), -1)
        rows, cols = np.nonzero(labels)
        flat = cols.tolist()
        ends = np.cumsum(np.bincount(rows, minlength=len(labels))).tolist()
        starts = [0] + ends[:-1]
        return [flat[a:b] for a, b in zip(starts, ends)]

    def content_sha256(self) -> str:
        """sha256 over every column as stored (paths, durations and extra columns too): the
        items table's checksum, recorded at creation and checked on every read."""
        h = hashlib.sha256()
        for col in (self.ids, self.paths, self.sha256, self.splits, self.class_names):
            h.update(json.dumps([str(x) for x in col]).encode())
        h.update(np.asarray(self.durations, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.uint8).tobytes())
        h.update(json.dumps(bool(self.multi_label)).encode())
        for name in sorted(self.extra):
            h.update(json.dumps([name, [str(x) for x in np.asarray(self.extra[name])]]).encode())
        if self.has_unlabelled:  # only then: the checksums of fully labelled tables stay as before
            h.update(b"labelled")
            h.update(self.labelled_mask.astype(np.uint8).tobytes())
        return h.hexdigest()
