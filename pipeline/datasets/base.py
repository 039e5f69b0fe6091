"""What a dataset is to eastkd: a list of audio items with splits, labelled or not.

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
    ``fold`` for ESC-50) that are written as extra columns of the items table. An item with
    ``labelled=False`` has no labels (it serves the KD loss only) and must be a train item.
    """

    id: str
    path: str
    split: str
    labels: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    labelled: bool = True


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
    # folders of unlabelled audio added to the dataset (``extract --unlabelled DIR``),
    # recorded in the store's dataset attrs (``unlabelled``)
    unlabelled_sources: list[str] = field(default_factory=list)

    def check_unlabelled(self) -> None:
        """Refuse an unlabelled item outside train, or one that carries labels, naming it."""
        for item in self.items:
            if item.labelled:
                continue
            if item.labels:
                raise EastkdError(f"item {item.id!r} is marked unlabelled but has labels "
                                  f"{item.labels}; drop them or mark it labelled")
            if item.split != "train":
                raise EastkdError(
                    f"item {item.id!r} ({item.path}) has no label but is a {item.split or 'no'} "
                    "item; unlabelled items are train items only: give it a label or make it "
                    "a train item")

    @property
    def n_unlabelled(self) -> int:
        return sum(1 for it in self.items if not it.labelled)


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
