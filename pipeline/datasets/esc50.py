"""ESC-50 adapter: read the official ``ESC-50-master`` folder as it unpacks from GitHub.

Layout (nothing else is needed, nothing is downloaded)::

    PATH/meta/esc50.csv        filename,fold,target,category,esc10,src_file,take
    PATH/audio/<filename>      2000 five-second 44.1 kHz mono WAV files

50 single-label classes; ``class_names[target]`` is the ``category`` of that target. Each item
keeps its official fold (1-5) in ``Item.extra['fold']``. The default split holds fold 5 out as
test and fold 4 as valid (folds 1-3 train), i.e. ``esc50_split_for_fold(fold, 5)``; the paper's
5-fold protocol re-derives splits per test fold from ``extra['fold']`` with the same helper.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from eastkd.errors import EastkdError
from eastkd.pipeline.datasets.base import DatasetSpec, Item, find_metadata

METADATA = os.path.join("meta", "esc50.csv")
AUDIO_DIR = "audio"
REQUIRED_COLUMNS = ("filename", "fold", "target", "category")
N_FOLDS = 5
DEFAULT_TEST_FOLD = 5


def esc50_split_for_fold(fold_of_item: int, test_fold: int) -> str:
    """Split of an item in the fold-``test_fold`` run: the held-out fold is test, the fold before
    it (cyclically: test 1 -> valid 5) is valid, the other three folds are train."""
    if not 1 <= test_fold <= N_FOLDS:
        raise EastkdError(f"esc50: test fold must be 1-{N_FOLDS}, got {test_fold}")
    if fold_of_item == test_fold:
        return "test"
    if fold_of_item == (test_fold - 2) % N_FOLDS + 1:
        return "valid"
    return "train"


def _int(value: str, column: str, line: int, csv_path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise EastkdError(f"esc50: {csv_path} line {line}: column {column!r} holds {value!r}, "
                          f"expected an integer") from None


def load_esc50(path: str) -> DatasetSpec:
    """Items, classes and default splits of the ESC-50 folder at ``path`` (``esc50:PATH``)."""
    root = Path(path).expanduser().resolve()
    csv_path = find_metadata(root, METADATA, "esc50",
                             "pass the ESC-50-master folder that holds meta/esc50.csv and audio/")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise EastkdError(f"esc50: {csv_path} lacks column(s) {', '.join(missing)}; expected "
                              f"the official header filename,fold,target,category,esc10,"
                              f"src_file,take")
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise EastkdError(f"esc50: {csv_path} lists no clips")

    names: dict[int, str] = {}
    items: list[Item] = []
    audio_dir = root / AUDIO_DIR
    for line, row in rows:
        if any(row.get(c) is None for c in REQUIRED_COLUMNS):
            raise EastkdError(f"esc50: {csv_path} line {line} has too few fields; expected "
                              f"{len(header)} comma-separated values")
        fold = _int(row["fold"], "fold", line, csv_path)
        target = _int(row["target"], "target", line, csv_path)
        if not 1 <= fold <= N_FOLDS:
            raise EastkdError(f"esc50: {csv_path} line {line}: fold {fold} is not in 1-{N_FOLDS}")
        category = row["category"]
        if names.setdefault(target, category) != category:
            raise EastkdError(f"esc50: {csv_path} line {line}: target {target} is named "
                              f"{category!r} here but {names[target]!r} earlier")
        filename = row["filename"]
        items.append(Item(id=Path(filename).stem, path=str(audio_dir / filename),
                          split=esc50_split_for_fold(fold, DEFAULT_TEST_FOLD),
                          labels=[target], extra={"fold": fold}))

    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names) + 1)) - set(names))
        raise EastkdError(f"esc50: {csv_path} has no clips for target(s) "
                          f"{', '.join(map(str, gaps[:5]))}; targets must run 0..K-1")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise EastkdError(f"esc50: {csv_path} lists {dup!r} more than once")

    missing_audio = [it.path for it in items if not os.path.isfile(it.path)]
    if missing_audio:
        raise EastkdError(f"esc50: {len(missing_audio)} of {len(items)} audio files listed in "
                          f"{csv_path} are missing under {audio_dir} (first: {missing_audio[0]})")

    return DatasetSpec(
        name="esc50",
        items=items,
        class_names=[names[t] for t in range(len(names))],
        multi_label=False,
        source=f"esc50:{root}",
        description=(f"ESC-50 ({len(items)} clips, {len(names)} classes); default split: fold "
                     f"{DEFAULT_TEST_FOLD} test, fold {DEFAULT_TEST_FOLD - 1} valid, rest train"),
    )
