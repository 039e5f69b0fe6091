"""Generic dataset adapters: a manifest file (CSV or JSON Lines) and a folder of class folders.

``resolve_dataset`` turns the one string a user gives (``NAME:PATH``, a manifest file or a
folder) into a :class:`~eastkd.pipeline.datasets.base.DatasetSpec`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.datasets.base import DatasetSpec, Item
from eastkd.pipeline.datasets.splits import (
    DEFAULT_SPLIT_RATIOS,
    DEFAULT_SPLIT_SEED,
    rarest_label,
    stratified_split,
)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"}
)
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")


def normalise_split(value: str, where: str) -> str:
    """``train``/``valid``/``test`` for a split name (``val``/``validation`` mean ``valid``)."""
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise EastkdError(
            f"{where}: unknown split {value!r}; use one of train, valid (or val, validation), test"
        )
    return split


def _assign_missing_splits(items: list[Item], names: list[list[str]], multi_label: bool,
                           ratios: tuple[float, float, float], seed: int) -> dict[str, Any]:
    """Give labelled items without a split (``""``) a stratified one, unlabelled ones train;
    the ``split_info`` to record (the labelled items alone decide the stratified split)."""
    for it in items:
        if not it.labelled and not it.split:
            it.split = "train"
    todo = [i for i, it in enumerate(items) if not it.split]
    if not todo:
        return {"method": "given by the dataset"}
    ids = [items[i].id for i in todo]
    if multi_label:
        index = {n: k for k, n in enumerate(sorted({n for ns in names for n in ns}))}
        strata: list[Any] = rarest_label([[index[n] for n in names[i]] for i in todo])
    else:
        strata = [names[i][0] for i in todo]
    for i, split in zip(todo, stratified_split(ids, strata, ratios, seed)):
        items[i].split = split
    info: dict[str, Any] = {"method": "stratified", "ratios": list(ratios), "seed": int(seed),
                            "stratified_on": "rarest class" if multi_label else "class"}
    if len(todo) < sum(it.labelled for it in items):
        info["items"] = len(todo)  # the rest had their split from the dataset
    return info


def _with_splits(source: Path, description: str, items: list[Item], names: list[list[str]],
                 class_names: list[str], multi_label: bool,
                 ratios: tuple[float, float, float], seed: int) -> DatasetSpec:
    """The dataset of a manifest or class folder, its items without a split given one
    (:func:`_assign_missing_splits`; ``names`` are each item's class names)."""
    split_info = _assign_missing_splits(items, names, multi_label, ratios, seed)
    return DatasetSpec(
        name=_dataset_name(source),
        items=items,
        class_names=class_names,
        multi_label=multi_label,
        source=str(source.resolve()),
        description=description,
        split_info=split_info,
    )


def _dataset_name(path: Path) -> str:
    name = path.stem if path.is_file() else path.name
    if name in {"manifest", "metadata", "index"} and path.parent.name:
        name = path.parent.name
    return name


# ---------------------------------------------------------------------------------------------
# manifest files


def read_manifest_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Columns and ``(line number, row)`` pairs of a CSV or JSONL manifest."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows = [(reader.line_num, _check_fields(path, reader.line_num, columns, row))
                    for row in reader]
        return columns, rows
    columns: list[str] = []
    rows = []
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EastkdError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); "
                    "each line must be one JSON object"
                ) from exc
            if not isinstance(row, dict):
                raise EastkdError(
                    f"{path}:{lineno}: expected a JSON object with id, path, label(s) and split"
                )
            columns.extend(k for k in row if k not in columns)
            rows.append((lineno, row))
    return columns, rows


def _check_fields(path: Path, lineno: int, columns: list[str], row: dict[Any, Any]
                  ) -> dict[str, Any]:
    """A CSV row with exactly the header's fields; more or fewer is refused, naming the line
    (an unquoted comma inside a label or path is the usual cause)."""
    extra = row.get(None)
    short = [c for c in columns if row.get(c) is None]
    if extra or short:
        n = len(columns) + len(extra or []) - len(short)
        raise EastkdError(
            f"{path}:{lineno}: {n} fields, the header has {len(columns)} "
            f"({', '.join(columns)}); put a field that contains a comma in double quotes, "
            'e.g. "brass, reed" (several labels: a labels column with ; between them)'
        )
    return row


def _split_labels(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(";") if v.strip()]


_TRUE, _FALSE = {"1", "true", "yes", "y"}, {"0", "false", "no", "n"}
_KNOWN_COLUMNS = {"id", "path", "label", "labels", "split", "labelled"}


def _labelled(row: dict[str, Any], names: list[str], multi: bool, where: str) -> bool:
    """Whether a row is labelled: the ``labelled`` column when it says so (1/0, true/false,
    yes/no), else whether it names a class. In a multi-label manifest an empty ``labels`` cell
    is an unlabelled item; a labelled row with no positive tag says ``labelled`` 1 (or, in
    JSONL, ``"labels": []``)."""
    flag = row.get("labelled")
    text = str(flag).strip().lower() if flag is not None else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        if names:
            raise EastkdError(f"{where}: labelled is {flag!r} but the row names classes "
                              f"{', '.join(names)}; clear one of them")
        return False
    if text:
        raise EastkdError(f"{where}: labelled {flag!r}: use 1 or 0 (true/false), or leave it "
                          "empty")
    return bool(names) or (multi and isinstance(row.get("labels"), list))


def _row_split(row: dict[str, Any], labelled: bool, has_split: bool, where: str,
               item_id: str) -> str:
    """The row's split ("" for a stratified one); an unlabelled row is a train row (an empty
    split cell makes it one) and any other split is refused naming the row."""
    cell = str(row.get("split") or "").strip()
    if labelled:
        return normalise_split(cell, where) if has_split else ""
    split = normalise_split(cell, where) if cell else "train"
    if split != "train":
        raise EastkdError(f"{where}: id {item_id!r} has no label but is a {split} row; "
                          "unlabelled items are train items only: give it a label or make it "
                          "a train row")
    return split


def _row_item(row: dict[str, Any], where: str, lineno: int, seen: dict[str, int], base: Path,
              multi: bool, has_split: bool) -> tuple[Item, list[str]]:
    """One manifest row as an :class:`Item` (labels still as names) and its class names."""
    item_id = str(row.get("id") if row.get("id") is not None else "").strip()
    if not item_id:
        raise EastkdError(f"{where}: empty id; every row needs a unique id")
    if item_id in seen:
        raise EastkdError(
            f"{where}: duplicate id {item_id!r} (first on line {seen[item_id]}); "
            "ids must be unique"
        )
    seen[item_id] = lineno
    rel = str(row.get("path") or "").strip()
    if not rel:
        raise EastkdError(f"{where}: empty path for id {item_id!r}")
    audio = Path(rel).expanduser()
    audio = audio if audio.is_absolute() else base / audio
    # a path that does not exist is kept: extract stops at it naming the item
    # (--on-error fail; finished work is kept) or records it as skipped, "file not found"
    names = _split_labels(row.get("labels") if multi else row.get("label"))
    labelled = _labelled(row, names, multi, where)
    if labelled and not multi and not names:
        raise EastkdError(f"{where}: empty label for id {item_id!r} marked labelled; give "
                          "its class, or leave labelled empty for an unlabelled train item")
    if not multi and len(names) > 1:
        raise EastkdError(
            f"{where}: label {row.get('label')!r} names several classes; call the column "
            "'labels' for multi-label data"
        )
    split = _row_split(row, labelled, has_split, where, item_id)
    extra = {k: v for k, v in row.items() if k not in _KNOWN_COLUMNS and k is not None}
    return Item(id=item_id, path=str(audio), split=split, extra=extra, labelled=labelled), names



def load_manifest(path: str, split_ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
                  split_seed: int = DEFAULT_SPLIT_SEED) -> DatasetSpec:
    """Load a ``.csv`` or ``.jsonl`` manifest with fields ``id, path, label|labels, split``.

    ``label`` holds one class name per item (single-label); ``labels`` holds ``;``-separated
    names (in JSONL also a list) and makes the dataset multi-label. ``path`` is relative to the
    manifest's folder or absolute (a file that does not exist is listed all the same: extract
    refuses or skips it, by its ``--on-error``). ``split`` is train/valid/test (val, validation
    accepted); when the column is absent altogether, items get a stratified split by class
    (:func:`~eastkd.pipeline.datasets.splits.stratified_split` with ``split_ratios`` and
    ``split_seed``), recorded in ``split_info``. Other fields are kept in ``Item.extra``.
    Class names are sorted and ``Item.labels`` index into them.

    A row with an empty ``label``/``labels`` is an *unlabelled* item (KD targets only): a train
    item (an empty ``split`` cell makes it one; valid or test is refused naming the row),
    outside the stratified split. An optional ``labelled`` column (1/0) says so explicitly; a
    multi-label row with no positive tag is written ``labelled`` 1 (or ``"labels": []``).
    """
    mpath = Path(path).expanduser()
    if not mpath.is_file():
        raise EastkdError(
            f"manifest {mpath} does not exist; give the path of a .csv or .jsonl file"
        )
    if mpath.suffix.lower() not in MANIFEST_SUFFIXES:
        raise EastkdError(f"manifest {mpath} must end in .csv or .jsonl")
    columns, rows = read_manifest_rows(mpath)
    missing = [c for c in ("id", "path") if c not in columns]
    if "label" not in columns and "labels" not in columns:
        missing.append("label (or labels)")
    if missing:
        raise EastkdError(
            f"manifest {mpath} lacks column(s) {', '.join(missing)}; expected id, path, "
            f"label or labels, split (found: {', '.join(columns) or 'none'})"
        )
    multi = "labels" in columns
    has_split = "split" in columns
    base = mpath.resolve().parent
    seen: dict[str, int] = {}
    raw: list[tuple[Item, list[str]]] = []
    for lineno, row in rows:
        raw.append(_row_item(row, f"{mpath}:{lineno}", lineno, seen, base, multi, has_split))
    if not raw:
        raise EastkdError(f"manifest {mpath} lists no items; add one row per audio file")
    class_names = sorted({n for _, names in raw for n in names})
    index = {n: i for i, n in enumerate(class_names)}
    items = []
    for item, names in raw:
        item.labels = sorted({index[n] for n in names})
        items.append(item)
    return _with_splits(mpath, f"manifest {mpath.name}", items, [names for _, names in raw],
                        class_names, multi, split_ratios, split_seed)


# ---------------------------------------------------------------------------------------------
# class folders


def _is_audio_entry(path: Path) -> bool:
    """A file, or something in its place that extract records as a skipped item (under
    ``--on-error skip``; with ``fail`` it stops naming it): a dangling link, a folder."""
    return path.is_file() or path.is_symlink() or path.is_dir()


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if _is_audio_entry(p)
        and p.suffix.lower() in AUDIO_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _file_id(file: Path, base: Path, seen: dict[str, str], advice: str) -> str:
    """The id of an audio file: its path relative to ``base`` without the extension; an id
    already in ``seen`` (id -> file) is refused naming both files and ``advice``."""
    item_id = file.relative_to(base).with_suffix("").as_posix()
    if item_id in seen:
        raise EastkdError(f"{file} and {seen[item_id]} give the same id {item_id!r}; {advice}")
    seen[item_id] = str(file)
    return item_id


def _split_first_entries(split_dirs: list[Path]) -> list[tuple[Path, str, str]]:
    """``(file, class name, split)`` of a ``<split>/<class>/...`` layout."""
    entries: list[tuple[Path, str, str]] = []
    for sdir in split_dirs:
        split = normalise_split(sdir.name, str(sdir))
        stray = [f for f in sdir.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS]
        if stray:
            raise EastkdError(
                f"{stray[0]} lies directly in split folder {sdir}; put it in a class sub-folder"
            )
        for cdir in _subdirs(sdir):
            entries.extend((f, cdir.name, split) for f in _audio_files(cdir))
    return entries


def _class_first_entries(class_dirs: list[Path]) -> list[tuple[Path, str, str]]:
    """``(file, class name, split)`` of ``<class>/...`` folders, each either with
    ``<class>/<split>/...`` split folders or without splits (split ``""``: stratified later)."""
    entries: list[tuple[Path, str, str]] = []
    for cdir in class_dirs:
        split_dirs = [d for d in _subdirs(cdir) if d.name.lower() in _SPLIT_ALIASES]
        if not split_dirs:
            entries.extend((f, cdir.name, "") for f in _audio_files(cdir))
            continue
        stray = [
            f
            for f in _audio_files(cdir)
            if f.relative_to(cdir).parts[0].lower() not in _SPLIT_ALIASES
        ]
        if stray:
            raise EastkdError(
                f"{stray[0]} lies outside the split folders of class {cdir.name!r}; "
                "put every file of that class under train/, valid/ or test/"
            )
        for sdir in split_dirs:
            split = normalise_split(sdir.name, str(sdir))
            entries.extend((f, cdir.name, split) for f in _audio_files(sdir))
    return entries


def load_folder(path: str, split_ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
                split_seed: int = DEFAULT_SPLIT_SEED,
                exclude: Sequence[str] = ()) -> DatasetSpec:
    """Load a folder holding one sub-folder per class of audio files (any depth below it).

    Audio files are found by extension (wav, flac, ogg, mp3, aiff/aif, au; hidden files skipped).
    Splits come from the layout when it names them: either ``<class>/<split>/...`` inside every
    class folder, or ``<split>/<class>/...`` at the top (split folders train, valid, test; val
    and validation accepted). Otherwise items get a stratified split by class
    (:func:`~eastkd.pipeline.datasets.splits.stratified_split` with ``split_ratios`` and
    ``split_seed``), recorded in ``split_info``. The id of an item is its path relative to
    ``path`` without the extension. Top-level folders in ``exclude`` are no classes (a folder
    of unlabelled audio inside ``path``: see :func:`add_unlabelled`).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise EastkdError(
            f"dataset folder {root} does not exist; give a folder with one sub-folder per class"
        )
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
    if loose:
        raise EastkdError(
            f"{loose[0]} lies directly in {root}; put audio files in one sub-folder per class"
        )
    skip = {Path(d).expanduser().resolve() for d in exclude}
    top = [d for d in _subdirs(root) if d.resolve() not in skip]
    split_first = bool(top) and all(d.name.lower() in _SPLIT_ALIASES for d in top)
    entries = _split_first_entries(top) if split_first else _class_first_entries(top)
    if not entries:
        raise EastkdError(
            f"dataset folder {root} holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) "
            "in class sub-folders"
        )
    class_names = sorted({c for _, c, _ in entries})
    index = {c: i for i, c in enumerate(class_names)}
    seen: dict[str, str] = {}
    items = [Item(id=_file_id(f, root, seen, "keep one file per name"), path=str(f.resolve()),
                  split=split, labels=[index[cls]])
             for f, cls, split in sorted(entries)]
    return _with_splits(root, f"class folders under {root.name}", items,
                        [[class_names[i.labels[0]]] for i in items], class_names, False,
                        split_ratios, split_seed)


# ---------------------------------------------------------------------------------------------
# unlabelled audio


def add_unlabelled(spec: DatasetSpec, folders: Sequence[str]) -> DatasetSpec:
    """``spec`` plus every audio file under ``folders`` as an unlabelled train item.

    An item's id is its path relative to the dataset folder when the folder lies inside it
    (``<root>/unlabelled/a/b.wav`` -> ``unlabelled/a/b``), else relative to the folder's parent
    (``/data/extra/b.wav`` -> ``extra/b``); an id that is taken already is refused, naming
    both files. The folders are recorded in ``unlabelled_sources``.
    """
    root = Path(spec.source) if spec.source and Path(spec.source).is_dir() else None
    seen = {it.id: it.path for it in spec.items}
    added: list[Item] = []
    for text in folders:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise EastkdError(f"--unlabelled {text}: no such folder; give a folder of audio "
                              "files without classes")
        folder = folder.resolve()
        base = root.resolve() if root is not None and folder.is_relative_to(root.resolve()) \
            else folder.parent
        files = _audio_files(folder)
        if not files:
            raise EastkdError(f"--unlabelled {text}: holds no audio files "
                              f"({', '.join(sorted(AUDIO_EXTENSIONS))})")
        advice = "rename one of them or the unlabelled folder"
        added.extend(Item(id=_file_id(f, base, seen, advice), path=str(f.resolve()),
                          split="train", labelled=False)
                     for f in files)
    spec.items = spec.items + added
    spec.unlabelled_sources = spec.unlabelled_sources + [str(Path(d).expanduser().resolve())
                                                         for d in folders]
    return spec


# ---------------------------------------------------------------------------------------------
# one string -> a dataset


def resolve_dataset(spec: str, split_ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
                    split_seed: int = DEFAULT_SPLIT_SEED,
                    unlabelled: Sequence[str] = ()) -> DatasetSpec:
    """A dataset from ``NAME:PATH`` (a registered adapter), a manifest file, or a class folder.

    ``NAME:PATH`` is only read as such when ``NAME`` is a registered dataset name and ``spec``
    itself is not an existing path, so ``C:\\data`` or ``./a:b`` stay plain paths.
    ``split_ratios`` and ``split_seed`` make the stratified split of manifests and folders
    that name no splits (the official layouts bring their own). ``unlabelled`` folders add
    their audio as unlabelled train items (:func:`add_unlabelled`; a folder inside a class-folder
    dataset is then no class).
    """
    dataset = _resolve(spec, split_ratios, split_seed, unlabelled)
    dataset = add_unlabelled(dataset, unlabelled) if unlabelled else dataset
    dataset.check_unlabelled()
    return dataset


def _resolve(spec: str, split_ratios: tuple[float, float, float], split_seed: int,
             unlabelled: Sequence[str]) -> DatasetSpec:
    """:func:`resolve_dataset` without the unlabelled folders' items."""
    split = {"split_ratios": tuple(split_ratios), "split_seed": int(split_seed)}
    from eastkd.pipeline.core import registry

    text = str(spec).strip()
    if not text:
        raise EastkdError("empty dataset; give NAME:PATH, a .csv/.jsonl manifest or a folder")
    target = Path(text).expanduser()
    name, sep, rest = text.partition(":")
    if sep and not target.exists() and name in registry.datasets.names():
        factory = registry.datasets.get(name)
        generic = factory in (load_manifest, load_folder)
        if factory is load_folder:
            dataset = factory(rest, exclude=unlabelled, **split)
        else:
            dataset = factory(rest, **split) if generic else factory(rest)
        if not isinstance(dataset, DatasetSpec):
            raise EastkdError(
                f"dataset adapter {name!r} returned {type(dataset).__name__}, not a DatasetSpec"
            )
        return dataset
    if target.is_file():
        if target.suffix.lower() in MANIFEST_SUFFIXES:
            return load_manifest(str(target), **split)
        raise EastkdError(f"dataset file {target} is not a .csv or .jsonl manifest")
    if target.is_dir():
        return load_folder(str(target), exclude=unlabelled, **split)
    raise EastkdError(
        f"dataset {text!r} does not exist; give a .csv/.jsonl manifest, a folder of class "
        f"folders, or NAME:PATH with NAME one of: {', '.join(registry.datasets.names())}"
    )
