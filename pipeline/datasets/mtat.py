"""MagnaTagATune adapter: the official ``annotations_final.csv`` plus the unzipped MP3 folders.

Layout (nothing is downloaded)::

    PATH/annotations_final.csv     tab-separated, fields optionally wrapped in double quotes:
                                   clip_id, 188 tag columns of 0/1, mp3_path
                                   (``f/american_bach_soloists-...-0-29.mp3``)
    PATH/<mp3_path>                audio, i.e. PATH/0/ ... PATH/f/ (mp3.zip.001-003 unpacked here)
      or PATH/mp3/<mp3_path>       the same folders one level down

Classes are the 50 most frequent tags over the whole csv (ties broken by column order), ordered
by descending count; items are multi-label and a clip with none of them keeps an empty label list.
Split follows the usual convention on the 16 audio folders: ``0``-``b`` train, ``c`` valid,
``d``-``f`` test. Known-empty MP3s are listed like any other clip; ``extract`` reports bad audio.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from eastkd.errors import EastkdError
from eastkd.pipeline.datasets.base import DatasetSpec, Item, find_metadata

METADATA = "annotations_final.csv"
ID_COLUMN = "clip_id"
PATH_COLUMN = "mp3_path"
AUDIO_SUBDIRS = ("", "mp3")  # audio under PATH/<mp3_path>, else PATH/mp3/<mp3_path>
TOP_K = 50
HEX = "0123456789abcdef"


def mtat_split_for_folder(folder: str) -> str:
    """Split of a clip from its audio folder (one hex digit): 0-b train, c valid, d-f test."""
    key = folder.lower()
    if len(key) != 1 or key not in HEX:
        raise EastkdError(f"mtat: audio folder {folder!r} is not one of 0-9, a-f")
    if key == "c":
        return "valid"
    return "test" if key in "def" else "train"


def _read_table(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line, fields) rows of the tab-separated, optionally quoted csv."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quotechar='"')
        header = [h.strip() for h in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    for column in (ID_COLUMN, PATH_COLUMN):
        if column not in header:
            sep = " (the file is not tab-separated)" if len(header) == 1 else ""
            raise EastkdError(f"mtat: {csv_path} lacks column {column!r}{sep}; expected the "
                              f"official tab-separated header clip_id, 188 tags, mp3_path")
    if len(header) < 3:
        raise EastkdError(f"mtat: {csv_path} has no tag columns between clip_id and mp3_path")
    for line, row in rows:
        if len(row) != len(header):
            raise EastkdError(f"mtat: {csv_path} line {line} has {len(row)} fields, the header "
                              f"has {len(header)}")
    return header, rows


def _audio_base(root: Path, rel_paths: list[str]) -> Path:
    """The folder among ``AUDIO_SUBDIRS`` that holds the clips; errors name what was searched."""
    best: tuple[int, Path, list[str]] | None = None
    for sub in AUDIO_SUBDIRS:
        base = root / sub if sub else root
        missing = [str(base / p) for p in rel_paths if not os.path.isfile(base / p)]
        if not missing:
            return base
        if best is None or len(missing) < len(best[2]):
            best = (len(rel_paths) - len(missing), base, missing)
    assert best is not None
    found, base, missing = best
    searched = " and ".join(f"{root / s if s else root}/<mp3_path>" for s in AUDIO_SUBDIRS)
    if found == 0:
        raise EastkdError(f"mtat: none of the {len(rel_paths)} MP3 files listed in {METADATA} was "
                          f"found; searched {searched} (e.g. {missing[0]}); unpack mp3.zip.* there")
    raise EastkdError(f"mtat: {len(missing)} of {len(rel_paths)} MP3 files listed in {METADATA} "
                      f"are missing under {base} (first: {missing[0]}); searched {searched}")


def load_mtat(path: str) -> DatasetSpec:
    """Items (top-50 tags, multi-label) and splits of the MagnaTagATune folder ``path``."""
    root = Path(path).expanduser().resolve()
    csv_path = find_metadata(root, METADATA, "mtat", "pass the MagnaTagATune folder that holds "
                             f"{METADATA} and the audio folders 0-f")
    header, rows = _read_table(csv_path)
    if not rows:
        raise EastkdError(f"mtat: {csv_path} lists no clips")
    id_col, path_col = header.index(ID_COLUMN), header.index(PATH_COLUMN)
    tag_cols = [i for i in range(len(header)) if i not in (id_col, path_col)]

    flags: list[list[int]] = []
    for line, row in rows:
        try:
            flags.append([int(row[i]) for i in tag_cols])
        except ValueError:
            raise EastkdError(f"mtat: {csv_path} line {line}: tag values must be 0 or 1") from None
    counts = [sum(f[j] for f in flags) for j in range(len(tag_cols))]
    # Stable sort on descending count keeps column order among equal counts.
    top = sorted(range(len(tag_cols)), key=lambda j: -counts[j])[:TOP_K]
    class_names = [header[tag_cols[j]] for j in top]

    rel_paths = [row[path_col].strip() for _, row in rows]
    base = _audio_base(root, rel_paths)
    items: list[Item] = []
    seen: set[str] = set()
    for (line, row), rel, f in zip(rows, rel_paths, flags):
        clip_id = row[id_col].strip()
        if clip_id in seen:
            raise EastkdError(f"mtat: {csv_path} line {line}: clip_id {clip_id} is listed twice")
        seen.add(clip_id)
        folder = rel.split("/", 1)[0]
        try:
            split = mtat_split_for_folder(folder)
        except EastkdError:
            raise EastkdError(f"mtat: {csv_path} line {line}: mp3_path {rel!r} does not start "
                              f"with an audio folder 0-9 or a-f") from None
        labels = [k for k, j in enumerate(top) if f[j]]
        items.append(Item(id=clip_id, path=str(base / rel), split=split, labels=labels))

    return DatasetSpec(
        name="mtat",
        items=items,
        class_names=class_names,
        multi_label=True,
        source=f"mtat:{root}",
        description=(f"MagnaTagATune ({len(items)} clips, top-{len(class_names)} of "
                     f"{len(tag_cols)} tags); split by audio folder: 0-b train, c valid, d-f test"),
    )
