"""What a dataset is to eastkd: a list of labelled audio items with splits.

Adapters (manifest, folder, esc50, mtat, fma-small, ...) turn a path into a :class:`DatasetSpec`;
``extract`` hashes the files and writes the items table into the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eastkd.errors import EastkdError


@dataclass
class Item:
    """One audio file: a unique id, an absolute path, a split and its labels.

    ``labels`` holds class indices into :attr:`DatasetSpec.class_names` (one for single-label
    data, any number for multi-label). ``extra`` holds adapter-specific per-item fields (e.g.
    ``fold`` for ESC-50) that are written as extra columns of the items table.
    """

    id: str
    path: str
    split: str
    labels: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """A whole dataset: items, class names, and whether items may carry several labels."""

    name: str
    items: list[Item]
    class_names: list[str]
    multi_label: bool = False
    source: str = ""
    description: str = ""
    # how the splits were made, recorded in the store's dataset attrs (``split``): e.g.
    # {"method": "stratified", "ratios": [0.7, 0.15, 0.15], "seed": 0}; empty = the dataset's own
    split_info: dict[str, Any] = field(default_factory=dict)


def find_metadata(root: Path, relative: str, adapter: str, expect: str) -> Path:
    """``root/relative``, or an error that says where it was expected and, when the user passed
    a sub-folder of the dataset, which folder to pass instead. ``expect`` ends each message."""
    if not root.is_dir():
        raise EastkdError(f"{adapter}: dataset folder {root} does not exist; {expect}")
    path = root / relative
    if path.is_file():
        return path
    hint = ""
    if (root.parent / relative).is_file():
        hint = f" (it is in the parent folder: pass {adapter}:{root.parent} instead)"
    raise EastkdError(f"{adapter}: metadata file {path} not found{hint}; {expect}")
