"""FMA-small adapter: ``fma_metadata/tracks.csv`` plus the unzipped ``fma_small`` folder.

Layout (both zips from github.com/mdeff/fma unpacked side by side; nothing is downloaded)::

    PATH/fma_metadata/tracks.csv      pandas-style csv with three header rows:
                                      group (track, album, artist, set), column (genre_top, split,
                                      subset, ...), then a row holding only ``track_id``
    PATH/fma_small/NNN/NNNNNN.mp3     track id zero-padded to 6 digits, folder = its first 3

Items are the tracks whose (set, subset) is ``small`` (8000 tracks); the class is
(track, genre_top) (8 genres, class_names sorted alphabetically); the split is the official
(set, split): training -> train, validation -> valid, test -> test. Read with the csv module
(pandas is not a dependency); quoted multi-line text fields are handled by it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from eastkd.errors import EastkdError
from eastkd.pipeline.datasets.base import DatasetSpec, Item, find_metadata

METADATA = os.path.join("fma_metadata", "tracks.csv")
AUDIO_DIR = "fma_small"
SUBSET = "small"
SUBSET_COL = ("set", "subset")
SPLIT_COL = ("set", "split")
GENRE_COL = ("track", "genre_top")
SPLITS = {"training": "train", "validation": "valid", "test": "test"}
_FIELD_LIMIT = 1 << 26  # artist bios and comments can be long; csv's default is 128 KiB


def fma_audio_path(root: Path, track_id: int) -> Path:
    """Official location of a track's MP3: ``root/fma_small/012/012345.mp3``."""
    tid = f"{track_id:06d}"
    return root / AUDIO_DIR / tid[:3] / f"{tid}.mp3"


def _read_tracks(csv_path: Path) -> list[tuple[int, str, str, str, str]]:
    """(line, track_id, subset, split, genre_top) of every track in ``tracks.csv``."""
    old_limit = csv.field_size_limit(_FIELD_LIMIT)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            groups, columns, index = (next(reader, []) for _ in range(3))
            if not index or index[0].strip() != "track_id":
                raise EastkdError(f"fma-small: {csv_path} does not start with the three official "
                                  f"header rows (group, column, 'track_id'); use tracks.csv from "
                                  f"fma_metadata.zip")
            where = {(g.strip(), c.strip()): i for i, (g, c) in enumerate(zip(groups, columns))}
            missing = [c for c in (SUBSET_COL, SPLIT_COL, GENRE_COL) if c not in where]
            if missing:
                names = ", ".join(f"({g}, {c})" for g, c in missing)
                raise EastkdError(f"fma-small: {csv_path} lacks column(s) {names}; use "
                                  f"tracks.csv from fma_metadata.zip")
            cols = [where[SUBSET_COL], where[SPLIT_COL], where[GENRE_COL]]
            need = max(cols) + 1
            out = []
            for row in reader:
                if not row:
                    continue
                if len(row) < need:
                    raise EastkdError(f"fma-small: {csv_path} line {reader.line_num} has "
                                      f"{len(row)} fields, expected {len(groups)}")
                out.append((reader.line_num, row[0], *(row[i].strip() for i in cols)))
            return out
    finally:
        csv.field_size_limit(old_limit)


def load_fma_small(path: str) -> DatasetSpec:
    """Items, genres and official splits of FMA-small under ``path`` (``fma-small:PATH``)."""
    root = Path(path).expanduser().resolve()
    csv_path = find_metadata(root, METADATA, "fma-small",
                             "pass the folder that holds fma_metadata/ and fma_small/")
    small = [r for r in _read_tracks(csv_path) if r[2] == SUBSET]
    if not small:
        raise EastkdError(f"fma-small: {csv_path} has no track whose (set, subset) is 'small'")

    genres = sorted({genre for *_, genre in small if genre})
    index = {g: k for k, g in enumerate(genres)}
    items: list[Item] = []
    seen: set[int] = set()
    for line, raw_id, _, split, genre in small:
        try:
            track_id = int(raw_id)
        except ValueError:
            raise EastkdError(f"fma-small: {csv_path} line {line}: track_id {raw_id!r} is not "
                              f"an integer") from None
        if track_id in seen:
            raise EastkdError(f"fma-small: {csv_path} line {line}: track {track_id} listed twice")
        seen.add(track_id)
        if not genre:
            raise EastkdError(f"fma-small: {csv_path} line {line}: track {track_id} has no "
                              f"(track, genre_top)")
        if split not in SPLITS:
            raise EastkdError(f"fma-small: {csv_path} line {line}: (set, split) is {split!r}, "
                              f"expected one of {', '.join(SPLITS)}")
        items.append(Item(id=f"{track_id:06d}", path=str(fma_audio_path(root, track_id)),
                          split=SPLITS[split], labels=[index[genre]]))

    missing = [it.path for it in items if not os.path.isfile(it.path)]
    if missing:
        audio_dir, n = root / AUDIO_DIR, len(items)
        what = (f"none of the {n} small-subset MP3 files were found" if len(missing) == n else
                f"{len(missing)} of the {n} small-subset MP3 files are missing")
        raise EastkdError(f"fma-small: {what} under {audio_dir} (first: {missing[0]}); unpack "
                          f"fma_small.zip into {root}")

    return DatasetSpec(
        name="fma-small",
        items=items,
        class_names=genres,
        multi_label=False,
        source=f"fma-small:{root}",
        description=(f"FMA-small ({len(items)} tracks, {len(genres)} genres); official "
                     f"training/validation/test split"),
    )
