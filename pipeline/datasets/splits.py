"""Stratified train/valid/test splits for datasets that do not name their own, and the checks
that warn when a split lacks a class.

Class-folder datasets without split folders and manifests without a ``split`` column get
:func:`stratified_split` of their labelled items (unlabelled items are train items): within
each class (for multi-label data, each item's rarest class), items are shuffled with ``seed``
and cut so that the whole dataset follows ``ratios`` as closely as whole items allow
(:func:`split_sizes`) while every class of at least three items
gets at least one valid and one test item. The split depends on the ids, labels, ratios and
seed only, so it is the same on every machine.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from eastkd.errors import EastkdError

if TYPE_CHECKING:
    from eastkd.pipeline.datasets.base import DatasetSpec

SPLITS: tuple[str, ...] = ("train", "valid", "test")
DEFAULT_SPLIT_RATIOS: tuple[float, float, float] = (0.7, 0.15, 0.15)
DEFAULT_SPLIT_SEED = 0


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` (or three numbers) -> train/valid/test fractions summing to 1."""
    try:
        parts = [float(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6 \
            or parts[0] <= 0:
        raise EastkdError(f"--split-ratios {text!r}: give three fractions train,valid,test that "
                          "sum to 1, e.g. 0.7,0.15,0.15")
    return parts[0], parts[1], parts[2]


def _allocate(sizes: list[int], ratio: float, caps: list[int], last_first: bool) -> list[int]:
    """Items per class for one split of ``ratio``: the floor of each class's share (at least one
    for classes of three or more items), then one more for the classes with the largest
    remainders (ties: the first classes, or the last ones with ``last_first``) until the total
    is the dataset's rounded share. No class gets more than its ``caps`` entry."""
    exact = [n * ratio for n in sizes]
    counts = [min(cap, max(int(e), 1 if n >= 3 and ratio > 0 else 0))
              for n, e, cap in zip(sizes, exact, caps)]
    target = int(sum(sizes) * ratio + 0.5)
    tie = (lambda i: -i) if last_first else (lambda i: i)
    for i in sorted(range(len(sizes)), key=lambda i: (int(exact[i]) - exact[i], tie(i))):
        if sum(counts) >= target:
            break
        if counts[i] < min(caps[i], math.ceil(exact[i])):
            counts[i] += 1
    return counts


def split_sizes(sizes: list[int], ratios: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """(train, valid, test) items of each class: the whole dataset follows ``ratios`` as closely
    as whole items allow, every class of three or more items has a valid and a test item, and
    every class keeps at least one train item."""
    test = _allocate(sizes, ratios[2], [max(0, n - 1) for n in sizes], last_first=False)
    # valid's extra items go to other classes than test's, so train stays even across classes
    valid = _allocate(sizes, ratios[1], [max(0, n - 1 - t) for n, t in zip(sizes, test)],
                      last_first=True)
    return [(n - v - t, v, t) for n, v, t in zip(sizes, valid, test)]


def stratified_split(ids: Sequence[str], strata: Sequence[Any],
                     ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
                     seed: int = DEFAULT_SPLIT_SEED) -> list[str]:
    """The split of each id: per stratum (class), a seeded shuffle cut into
    :func:`split_sizes`."""
    rng = np.random.default_rng(seed)
    out = [""] * len(ids)
    by_stratum: dict[Any, list[int]] = {}
    for i, s in enumerate(strata):
        by_stratum.setdefault(s, []).append(i)
    classes = sorted(by_stratum, key=str)
    sizes = split_sizes([len(by_stratum[c]) for c in classes], ratios)
    for stratum, (n_train, n_valid, _) in zip(classes, sizes):
        members = sorted(by_stratum[stratum], key=lambda i: ids[i])
        order = [members[j] for j in rng.permutation(len(members))]
        for rank, i in enumerate(order):
            out[i] = ("train" if rank < n_train else
                      "valid" if rank < n_train + n_valid else "test")
    return out


def rarest_label(labels: Sequence[Sequence[int]]) -> list[int]:
    """Per item, its least frequent label (-1 for none): the stratum of a multi-label item."""
    freq = Counter(c for item in labels for c in item)
    return [min(item, key=lambda c: (freq[c], c)) if item else -1 for item in labels]


def split_counts(splits: Sequence[str]) -> dict[str, int]:
    c = Counter(splits)
    return {s: c.get(s, 0) for s in SPLITS}


def stratified_on(info: dict[str, Any]) -> str:
    """What a stratified split was stratified on, in the words every command uses: ``class``,
    or ``rarest class`` (multi-label: each item's rarest; stores before 0.2 say ``label``)."""
    return "rarest class" if "rarest" in str(info.get("stratified_on", "")) else "class"


def describe_split(info: dict[str, Any], splits: Sequence[str], unlabelled: int = 0) -> str:
    """One line: how the splits were made and their sizes (``unlabelled`` of the train items
    carry no label: they are counted in train and stay out of the stratified split)."""
    counts = ", ".join(f"{k} {v}" for k, v in split_counts(splits).items())
    if unlabelled:
        counts += f" (train holds {unlabelled} unlabelled items, outside the stratification)"
    if info.get("method") == "stratified":
        r = "/".join(f"{x:g}" for x in info["ratios"])
        return (f"split: stratified by {stratified_on(info)}, ratios {r} (--split-ratios), "
                f"seed {info['seed']} (--split-seed); {counts}")
    return f"split: {info.get('method', 'from the dataset')}; {counts}"


def missing_class_warnings(class_names: Sequence[str], labels: np.ndarray,
                           splits: Sequence[str]) -> list[str]:
    """One warning per split (valid, test) that lacks classes present in train.

    ``labels`` is the items x classes 0/1 matrix of the items table.
    """
    labels = np.asarray(labels)
    splits_arr = np.asarray(splits)
    in_train = labels[splits_arr == "train"].sum(axis=0) > 0
    out = []
    for split in ("valid", "test"):
        rows = splits_arr == split
        if not rows.any():
            out.append(f"warning: the {split} split is empty")
            continue
        absent = in_train & (labels[rows].sum(axis=0) == 0)
        lacking = [class_names[c] for c in np.flatnonzero(absent)]
        if lacking:
            shown = ", ".join(lacking[:10]) + (f" (+{len(lacking) - 10} more)"
                                               if len(lacking) > 10 else "")
            out.append(f"warning: {len(lacking)} class(es) have no {split} items: {shown}; "
                       f"{split} metrics cannot measure them (macro-F1 scores them 0)")
    return out


def dataset_split_report(spec: DatasetSpec) -> list[str]:
    """What extract prints about a dataset's splits: how they were made, sizes, warnings."""
    splits = [it.split for it in spec.items]
    labels = np.zeros((len(spec.items), max(1, len(spec.class_names))), dtype=np.uint8)
    for i, it in enumerate(spec.items):
        labels[i, it.labels] = 1
    return [describe_split(spec.split_info, splits, spec.n_unlabelled),
            *missing_class_warnings(spec.class_names, labels, splits)]
