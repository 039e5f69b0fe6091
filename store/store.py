"""The eastkd store: one self-describing container of items, features, embeddings and targets.

Layout and semantics are specified in ``docs/store-format.md``. Every array's first axis is the
item axis. Arrays are grouped in *sections* (``features/<name>``, ``embeddings/<key>``,
``targets/<name>``), each with a per-item ``status`` array (0 pending, 1 ok, 2 skipped) and an
``error`` array of reasons. Writers write whole chunks of data first and the status last, so a
status of 1 always means the row's data is on disk: a killed writer loses nothing that was
marked done, and the next run redoes only what is not.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from eastkd.store import digest, location
from eastkd.store.backends import backend_name, open_backend
from eastkd.store.backends.base import OK, PENDING, SKIPPED, Backend
from eastkd.store.damage import metadata_error, repair_hint, write_failure
from eastkd.errors import (
    EastkdError,
    StoreDamageError,
    StoreMismatchError,
    StoreNotFoundError,
)
from eastkd.store.items import ItemsTable

FORMAT_NAME = "eastkd-store"
FORMAT_VERSION = 3  # 2: checksummed chunks, NaN fill for floats, dimension names;
#                    3: content digests (per-chunk sha256 of decoded rows, store digest),
#                    items/labelled (unlabelled items) and per-view arrays.
# Versions 1 and 2 are read as they are (every item labelled, no digests, no views).
SECTION_KINDS = ("features", "embeddings", "targets")
FEATURES = "logmel"  # the features section that holds the student's log-mel input
_TARGET_CHUNK_BYTES = 4 << 20
_MAX_CHUNK_ITEMS = 8192
ITEM_DIM = "item"
# names of the row axes (after "item") of the arrays eastkd writes; others get NAME_0, NAME_1 ...
ROW_DIMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("features", "values"): ("mel", "frame"),
    ("embeddings", "clip"): ("dim",),
    ("embeddings", "frames"): ("frame", "dim"),
    ("targets", "values"): ("dim",),
    ("items", "labels"): ("class",),
}


def dimension_names(kind: str, array: str, row_ndim: int) -> tuple[str, ...]:
    """``("item", ...)``: the names of an item-aligned array's dimensions (xarray's dims)."""
    row = ROW_DIMS.get((kind, array))
    if row is None or len(row) != row_ndim:
        row = tuple(f"{array}_{i}" for i in range(row_ndim))
    return (ITEM_DIM, *row)


def _same_json(a: Any, b: Any) -> bool:
    """Whether two attribute values are equal once stored (tuples and lists compare equal)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def eastkd_version() -> str:
    try:
        from importlib.metadata import version

        return version("eastkd")
    except Exception:  # not installed: running from a checkout
        return "0+unknown"


def chunk_items(row_bytes: int, n_items: int, target_bytes: int = _TARGET_CHUNK_BYTES,
                max_items: int | None = None) -> int:
    """Items per chunk: a power of two giving chunks of about ``target_bytes`` (1–8 MB).

    Powers of two make every array's chunk boundaries line up, so a writer that owns a block of
    the largest chunk size owns whole chunks of every array. ``max_items`` (a power of two)
    caps the result: smaller chunks give finer resume and ``--shard`` units.
    """
    if max_items is not None and (max_items < 1 or max_items & (max_items - 1)):
        raise EastkdError(f"chunk items cap {max_items} must be a power of two (1, 2, 4, ...)")
    k = max(1, target_bytes // max(1, row_bytes))
    k = 1 << int(np.floor(np.log2(k)))
    n_cap = 1 << int(np.ceil(np.log2(max(1, n_items))))
    return int(max(1, min(k, _MAX_CHUNK_ITEMS, n_cap, max_items or _MAX_CHUNK_ITEMS)))


def store_exists(path: str) -> bool:
    """True when ``path`` (a local path or a URL) holds a complete eastkd store, or anything
    else that is not a store's half-created remains: what ``extract`` opens rather than
    creates. A URL without the format marker counts as absent (its creator was interrupted)."""
    if not location.is_url(path):
        return os.path.exists(location.local_path(path))
    location.check_remote_kind(path)
    return _has_marker(path)


def _has_marker(url: str) -> bool:
    try:
        backend = open_backend(url, "r")
    except StoreNotFoundError:
        return False
    try:
        return backend.get_attrs("").get("format") == FORMAT_NAME
    finally:
        backend.close()


@dataclass
class ArraySpec:
    """Shape of one row (after the item axis) and dtype of an array in a section."""

    row_shape: tuple[int, ...]
    dtype: Any
    dims: tuple[str, ...] | None = None  # row axes' names; default from ROW_DIMS


class StoreArray:
    """A read view of one stored array, read in blocks rather than rows."""

    def __init__(self, backend: Backend, path: str) -> None:
        self.backend = backend
        self.path = path

    @property
    def shape(self) -> tuple[int, ...]:
        return self.backend.info(self.path).shape

    @property
    def dtype(self) -> np.dtype:
        return self.backend.info(self.path).dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return self.backend.info(self.path).chunks

    @property
    def attrs(self) -> dict[str, Any]:
        return self.backend.get_attrs(self.path)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self.backend.read(self.path, selection)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order, with one read per storage chunk touched (not one per row):
        the classic loader bottleneck is reading small rows one at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        chunk = int(self.chunks[0])
        breaks = np.flatnonzero(np.diff(srt // chunk)) + 1
        parts = []
        for group in np.split(srt, breaks):
            lo, hi = int(group[0]), int(group[-1]) + 1
            parts.append(self.backend.read(self.path, slice(lo, hi))[group - lo])
        out = np.empty((rows.size,) + parts[0].shape[1:], dtype=parts[0].dtype)
        out[order] = np.concatenate(parts)
        return out

    def iter_blocks(self, block_items: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, data)`` over the item axis, aligned to the array's chunks."""
        n = self.shape[0]
        step = block_items or self.chunks[0]
        for start in range(0, n, step):
            stop = min(n, start + step)
            yield start, stop, self.backend.read(self.path, slice(start, stop))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return (f"<StoreArray {self.path}: shape {self.shape}, {self.dtype}, "
                f"chunks {self.chunks}>")

    def to_dask(self) -> Any:
        """The array as a dask array over the store's own chunks, read through the same checks
        as every other read (a damaged or missing chunk is one clear error)."""
        import dask.array as da

        return da.from_array(self, chunks=self.chunks, asarray=True,
                             meta=np.empty((0,) * self.ndim, dtype=self.dtype))


class Section:
    """A group of item-aligned arrays written together, with per-item status and errors."""

    def __init__(self, store: "Store", kind: str, name: str) -> None:
        self.store = store
        self.kind = kind
        self.name = name
        self.path = f"{kind}/{name}"
        self._digests: dict[str, bool] = {}

    @property
    def backend(self) -> Backend:
        return self.store.backend

    @property
    def attrs(self) -> dict[str, Any]:
        return self.backend.get_attrs(self.path)

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        self.backend.update_attrs(self.path, attrs)

    def __repr__(self) -> str:
        try:
            arrays = "; ".join(f"{a} {self.backend.info(f'{self.path}/{a}').shape}"
                               for a in self.array_names())
            counts = ", ".join(f"{v} {k}" for k, v in self.counts().items())
        except Exception as e:  # a repr must not raise (a closed or damaged store)
            return f"<Section {self.path} of {self.store.path} ({type(e).__name__})>"
        return f"<Section {self.path} of {self.store.path}: {arrays}; {counts}>"

    def array_names(self) -> list[str]:
        return [c for c in self.backend.children(self.path)
                if c not in ("status", "error") and self.backend.is_array(f"{self.path}/{c}")]

    def has(self, name: str) -> bool:
        return self.backend.exists(f"{self.path}/{name}")

    def array(self, name: str) -> StoreArray:
        if not self.has(name):
            raise EastkdError(f"{self.store.path}: {self.path} has no array {name!r}")
        return StoreArray(self.backend, f"{self.path}/{name}")

    @property
    def unit(self) -> int:
        """Items per write block: the largest chunk along items of this section's arrays."""
        return max(self.backend.info(f"{self.path}/{a}").chunks[0]
                   for a in self.array_names() + ["status"])

    def status(self) -> np.ndarray:
        """Each row's status; values other than pending, ok and skipped are damage (one line
        with the repair command), never rows silently left out."""
        status = self.backend.read(f"{self.path}/status")
        bad = np.flatnonzero(status > SKIPPED)
        if bad.size:
            raise StoreDamageError(
                f"{self.store.path}: {self.path}/status holds {bad.size} invalid values (rows "
                f"{int(bad[0])}-{int(bad[-1])}; valid are 0, 1, 2); {repair_hint(self.store.path)}")
        return status

    def bump_generation(self) -> None:
        """Record that rows marked done were reset (a repair, a re-hash): what was computed
        from the section before (targets) is stale from now on."""
        self.update_attrs({"generation": uuid.uuid4().hex})

    def errors(self) -> np.ndarray:
        return self.backend.read(f"{self.path}/error")

    def counts(self) -> dict[str, int]:
        st = self.status()
        return {"ok": int((st == OK).sum()), "skipped": int((st == SKIPPED).sum()),
                "pending": int((st == PENDING).sum())}

    @property
    def complete(self) -> bool:
        return bool((self.status() != PENDING).all())

    def skipped(self) -> list[tuple[str, str]]:
        """(item id, reason) of every skipped item."""
        st = self.status()
        rows = np.flatnonzero(st == SKIPPED)
        if rows.size == 0:
            return []
        err = self.errors()
        ids = self.store.items.ids
        return [(ids[i], str(err[i])) for i in rows]

    def records_digest(self, name: str) -> bool:
        """Whether array ``name`` has its chunks' content digests recorded (format 3)."""
        if name not in self._digests:
            self._digests[name] = self.backend.exists(digest.digest_path(self.path, name))
        return self._digests[name]

    def _write_data(self, name: str, start: int, value: np.ndarray) -> None:
        """Rows of one data array, then the content digests of the chunks they touch. Values
        are cast to the stored dtype here (numpy), so the digest hashes what is stored."""
        value = np.asarray(value)
        if self.records_digest(name):
            value = value.astype(self.backend.info(f"{self.path}/{name}").dtype, copy=False)
        self.backend.write(f"{self.path}/{name}", slice(start, start + len(value)), value)
        digest.record(self, name, start, value)

    def write_rows(self, start: int, data: dict[str, np.ndarray]) -> None:
        """Write rows of data arrays only, leaving their status pending: a writer that fills
        chunks one at a time marks them done afterwards with :meth:`write_block`."""
        for name, value in data.items():
            self._write_data(name, start, value)

    def reset_rows(self, rows: np.ndarray) -> None:
        """Mark rows pending again (their data is recomputed by the next extract)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        status = self.status()
        status[rows] = PENDING
        errors = self.errors()
        errors[rows] = ""
        self.bump_generation()  # before the status: a killed reset never leaves it unrecorded
        self.backend.write(f"{self.path}/status", slice(None), status)
        self.backend.write(f"{self.path}/error", slice(None), errors)
        self.backend.flush()

    def write_block(self, start: int, data: dict[str, np.ndarray], status: np.ndarray,
                    errors: list[str] | None = None) -> None:
        """Write rows ``start:start+len(status)`` of each array, then their status (last)."""
        stop = start + len(status)
        for name, value in data.items():
            self._write_data(name, start, value)
        if errors is not None:
            self.backend.write(f"{self.path}/error", slice(start, stop),
                               np.asarray(errors, dtype=object))
        self.backend.flush()
        self.backend.write(f"{self.path}/status", slice(start, stop),
                           np.asarray(status, dtype=np.uint8))
        self.backend.flush()

    def require_complete(self, hint: str = "finish it first") -> np.ndarray:
        """The status array, or an error when any item is still pending; ``hint`` says what
        to do about it."""
        status = self.status()
        pending = int((status == PENDING).sum())
        if pending:
            raise EastkdError(f"{self.store.path}: {self.path} is unfinished ({pending} of "
                              f"{len(status)} items pending); {hint}")
        return status


class Store:
    """An open eastkd store (Zarr directory, zip, or HDF5 file)."""

    def __init__(self, path: str, backend: Backend) -> None:
        self.path = path
        self.backend = backend
        attrs = backend.get_attrs("")
        if attrs.get("format") != FORMAT_NAME:
            raise StoreNotFoundError(
                f"{path}: not an eastkd store (no '{FORMAT_NAME}' format attribute); "
                "create one with `eastkd extract`"
            )
        if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise EastkdError(
                f"{path}: store format version {attrs['format_version']} is newer than this "
                f"eastkd understands ({FORMAT_VERSION}); upgrade eastkd"
            )
        self._items: ItemsTable | None = None
        self._checked: set[str] = set()  # sections whose metadata was checked

    # -- whole store ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return self.backend.get_attrs("")

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def read_only(self) -> bool:
        return self.backend.read_only

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def nbytes_stored(self) -> int:
        return self.backend.nbytes_stored()

    def __repr__(self) -> str:
        """The store in one line: backend, items (counts, classes, splits), section names."""
        try:
            sections = "; ".join(f"{kind} {', '.join(self.section_names(kind))}"
                                 for kind in SECTION_KINDS if self.section_names(kind))
            return (f"<Store {self.path} ({self.backend_name}): {self.items.summary()}; "
                    f"{sections or 'no sections'}>")
        except Exception as e:  # a repr must not raise (a closed or damaged store)
            return f"<Store {self.path} ({type(e).__name__})>"

    def to_xarray(self, section: str) -> Any:
        """The section ``KIND/NAME`` (e.g. ``"embeddings/crepe-tiny"``) as a lazy
        ``xarray.Dataset`` with named dimensions and the items as coordinates: ``item`` (ids),
        ``split``, ``label`` (or ``labels`` x ``class`` for multi-label data) and extra columns
        such as ``fold``; the section's provenance in ``attrs``. Needs xarray."""
        from eastkd.store.xarray_view import section_dataset

        return section_dataset(self, section)

    @property
    def items(self) -> ItemsTable:
        if self._items is None:
            items = _read_items(self.backend)
            check_items(self.path, items, self.backend.get_attrs("items"),
                        self.attrs.get("dataset", {}))
            self._items = items
        return self._items

    @property
    def dataset_fingerprint(self) -> str:
        return str(self.attrs["dataset"]["fingerprint"])

    def update_items(self, items: ItemsTable, reason: str,
                     note: dict[str, Any] | None = None) -> None:
        """Replace the items table's content: the same items in the same order whose file
        hashes, durations, labels or extra columns changed (files re-hashed by
        ``extract --rehash`` or after a repair; file-stat columns added to an older store).
        Columns the store lacks are created. The table's checksum and the dataset fingerprint
        are recorded again; a changed fingerprint keeps the previous one in
        ``dataset.previous_fingerprints`` with ``reason``, and ``note`` is appended to the root
        attribute ``items_updates``."""
        if self.read_only:
            raise EastkdError(f"{self.path}: store is open read-only")
        if list(items.ids) != list(self.items.ids):
            raise StoreMismatchError(f"{self.path}: the items differ from the store's (ids or "
                                     "order); an update must keep them")
        n = len(items)
        for name, col in items.extra.items():
            if not self.backend.exists(f"items/{name}"):
                col = np.asarray(col)
                dtype = object if col.dtype.kind in "OUS" else col.dtype
                self.backend.create_array(f"items/{name}", (n,), (chunk_items(256, n),), dtype,
                                          data=col.astype(dtype), dims=(ITEM_DIM,))
        _write_item_columns(self.backend, items)
        self.backend.update_attrs("items", {"class_names": list(items.class_names),
                                            "multi_label": bool(items.multi_label)})
        self._items = None
        self.backend.update_attrs("items", {"checksum": _read_items(self.backend)
                                            .content_sha256()})
        dataset = dict(self.attrs.get("dataset", {}))
        if dataset.get("fingerprint") != items.fingerprint():
            previous = list(dataset.get("previous_fingerprints", []))
            previous.append({"fingerprint": dataset.get("fingerprint"), "reason": reason,
                             "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            dataset.update(fingerprint=items.fingerprint(), previous_fingerprints=previous)
        update: dict[str, Any] = {"dataset": dataset}
        if note:
            update["items_updates"] = list(self.attrs.get("items_updates", [])) + [note]
        self.backend.update_attrs("", update)
        self.backend.flush()

    # -- sections ------------------------------------------------------------------------------
    def section_names(self, kind: str) -> list[str]:
        return self.backend.children(kind)

    def has_section(self, kind: str, name: str) -> bool:
        """Whether section ``kind/name`` exists (its ``status`` array does); a status whose
        metadata is lost beside its chunks is one line, not "no such section"."""
        status = f"{kind}/{name}/status"
        if self.backend.exists(status):
            return True
        if self.backend.orphaned(status):
            raise metadata_error(self.path, status, self.backend.metadata_problem(status) or "")
        return False

    def section(self, kind: str, name: str) -> Section:
        """Section ``kind/name``, its metadata checked: an expected array whose metadata is
        missing or does not parse is one line naming it (see :func:`metadata_problems`)."""
        path = f"{kind}/{name}"
        if path not in self._checked:
            problems = metadata_problems(self, kind, name)
            if problems:
                node, problem, _ = problems[0]
                raise metadata_error(self.path, node, problem) if problem != "unwritten" \
                    else StoreDamageError(f"{self.path}: {node} is missing while rows are "
                                          f"marked done; {repair_hint(self.path)}")
        if not self.has_section(kind, name):
            have = ", ".join(n for n in self.section_names(kind)
                             if self.has_section(kind, n)) or "none"
            unfinished = f"; {path} is unfinished (its writer stopped before creating its " \
                         "status): rerun the command that writes it" \
                if self.backend.exists(path) else ""
            raise EastkdError(
                f"{self.path}: no {kind[:-1] if kind != 'features' else 'features'} "
                f"{name!r} in this store (have: {have}){unfinished}"
            )
        self._checked.add(path)
        return Section(self, kind, name)

    def require_section(self, kind: str, name: str, arrays: dict[str, ArraySpec],
                        attrs: dict[str, Any], identity: dict[str, Any],
                        overwrite: bool = False, max_chunk_items: int | None = None) -> Section:
        """Open section ``kind/name`` for writing, creating it if needed.

        ``identity`` are the settings that define the section's content (teacher, weights,
        options ...). An existing section with another identity is refused unless
        ``overwrite``, in which case it is deleted first. Creation is safe against concurrent
        writers doing the same: each array is created once and identical attributes are kept.
        ``max_chunk_items`` caps the chunk size along items of arrays created now.
        """
        assert kind in SECTION_KINDS
        if self.read_only:
            raise EastkdError(f"{self.path}: store is open read-only")
        path = f"{kind}/{name}"
        if self.backend.exists(path):
            self.check_identity(kind, name, identity, overwrite)
            if overwrite and self.backend.get_attrs(path).get("identity") is not None:
                self.backend.delete(path)
        n = len(self.items)
        if not self.backend.exists(path):  # a new section: its first write generation
            attrs = {**attrs, "generation": uuid.uuid4().hex}
        # a section created now records content digests; one written before format 3 does not
        new = not self.has_section(kind, name)
        self._require_group(path, {**attrs, "identity": identity})
        if new:
            self._require_group(f"{path}/{digest.DIGEST_GROUP}", {})
        with_digests = digest.records_digests(self.backend, path)
        units = []
        for aname, spec in arrays.items():
            row_bytes = int(np.prod(spec.row_shape or (1,))) * np.dtype(spec.dtype).itemsize
            ck = chunk_items(row_bytes, n, max_items=max_chunk_items)
            units.append(ck)
            dims = (ITEM_DIM, *spec.dims) if spec.dims else \
                dimension_names(kind, aname, len(spec.row_shape))
            self._create_if_missing(f"{path}/{aname}", (n, *spec.row_shape),
                                    (ck, *spec.row_shape), spec.dtype, dims)
            if with_digests and not self.backend.exists(digest.digest_path(path, aname)):
                digest.create_digest_array(self.backend, path, aname, n,
                                           self.backend.info(f"{path}/{aname}").chunks[0])
        unit = max(units) if units else chunk_items(1, n, max_items=max_chunk_items)
        # status last: the section exists (has_section) only once every array of it does, so a
        # writer stopped in between (a full disk) leaves an unfinished section, not a damaged one
        self._create_if_missing(f"{path}/error", (n,), (unit,), object, (ITEM_DIM,))
        self._create_if_missing(f"{path}/status", (n,), (unit,), np.uint8, (ITEM_DIM,))
        self.backend.flush()
        return Section(self, kind, name)

    def _require_group(self, path: str, attrs: dict[str, Any]) -> None:
        """Create group ``path`` or update its attributes, writing nothing when they already
        hold these values (a run with nothing to do must work on a read-only store)."""
        if self.backend.exists(path):
            old = self.backend.get_attrs(path)
            attrs = {k: v for k, v in attrs.items() if not _same_json(old.get(k), v)}
            if not attrs:
                return
        self.backend.create_group(path, attrs)

    def identity_diff(self, kind: str, name: str, identity: dict[str, Any],
                      partial: bool = False) -> list[str]:
        """The settings in which the identity recorded by section ``kind/name`` differs from
        ``identity`` (with ``partial``, among ``identity``'s keys only); none when the section
        or its recorded identity is absent."""
        path = f"{kind}/{name}"
        old = self.backend.get_attrs(path).get("identity") if self.backend.exists(path) else None
        if old is None:
            return []
        keys = set(identity) if partial else set(old) | set(identity)
        return sorted(k for k in keys if old.get(k) != identity.get(k))

    def check_identity(self, kind: str, name: str, identity: dict[str, Any],
                       overwrite: bool = False) -> None:
        """Refuse (unless ``overwrite``) when ``kind/name`` exists with another identity, naming
        the settings that differ; call it before expensive work that would be refused anyway."""
        path = f"{kind}/{name}"
        diff = [] if overwrite else self.identity_diff(kind, name, identity)
        if diff:
            raise StoreMismatchError(
                f"{self.path}: {path} was written with other settings "
                f"(differs in: {', '.join(diff)}); use another name or --overwrite"
            )

    def _create_if_missing(self, path: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                           dtype: Any, dims: tuple[str, ...]) -> None:
        if self.backend.orphaned(path):  # chunks without metadata: never written over
            raise metadata_error(self.path, path, self.backend.metadata_problem(path) or "")
        if self.backend.exists(path):
            if tuple(self.backend.info(path).shape) != tuple(shape):
                raise StoreMismatchError(
                    f"{self.path}: {path} has shape {self.backend.info(path).shape}, expected "
                    f"{shape}; use --overwrite to replace it"
                )
            return
        try:
            self.backend.create_array(path, shape, chunks, dtype, dims=dims)
        except FileExistsError:  # a concurrent writer created it first
            pass

    def replacing(self, what: str) -> Any:
        """A context in which writes reach the store only if all succeed (HDF5: a copy of the
        file renamed over it when complete), so that a full disk in the middle of writing a
        new section (``compress``) leaves the store as it was."""
        return self.backend.replacing(what)

    def delete_section(self, kind: str, name: str) -> None:
        self.backend.delete(f"{kind}/{name}")

    # -- convenience ---------------------------------------------------------------------------
    def embeddings(self, key: str) -> Section:
        return self.section("embeddings", key)

    def features(self, name: str = FEATURES) -> Section:
        return self.section("features", name)

    def targets(self, name: str) -> Section:
        return self.section("targets", name)

    def write_params(self, section: Section, params: dict[str, np.ndarray]) -> None:
        """Write small parameter arrays (e.g. PCA components) under ``<section>/params``."""
        for pname, value in params.items():
            value = np.asarray(value)
            path = f"{section.path}/params/{pname}"
            self.backend.delete(path)
            shape = value.shape or (1,)
            dims = tuple(f"{pname}_{i}" for i in range(len(shape)))
            self.backend.create_array(path, shape, shape, value.dtype,
                                      data=value.reshape(shape), dims=dims)
        self.backend.flush()

    def read_params(self, section: Section) -> dict[str, np.ndarray]:
        base = f"{section.path}/params"
        return {p: self.backend.read(f"{base}/{p}") for p in self.backend.children(base)}


def expected_arrays(kind: str, attrs: dict[str, Any]) -> list[str]:
    """The arrays every section of ``kind`` holds (docs/store-format.md), ``status`` first."""
    names = ["status", "error"]
    if kind == "features":
        names.append("values")
    elif kind == "embeddings":
        names.append("clip")
        if (attrs.get("identity") or {}).get("frames"):
            names.append("frames")
    elif kind == "targets":
        names.append("values")
        names += [f"params/{p}" for p in attrs.get("params") or []]
    return names


def metadata_problems(store: Store, kind: str, name: str) -> list[tuple[str, str, bool]]:
    """``(array path, problem, repairable)`` for each expected array of section
    ``kind/name`` whose metadata is missing or does not parse ("unwritten": absent with rows
    marked done). An array absent with nothing stored and every row pending is not a problem
    (its writer creates it); a section whose ``status`` was never created is unfinished."""
    backend, path = store.backend, f"{kind}/{name}"
    if not backend.exists(path):
        return []
    attrs = backend.get_attrs(path)
    out: list[tuple[str, str, bool]] = []
    for array in expected_arrays(kind, attrs):
        node = f"{path}/{array}"
        problem = backend.metadata_problem(node)
        if problem is None:
            continue
        if problem != "missing" or backend.orphaned(node):
            out.append((node, problem, True))
        elif array == "status":
            return []  # never created: unfinished, not damaged
        elif backend.exists(f"{path}/status") and (backend.read(f"{path}/status") != PENDING
                                                    ).any():
            out.append((node, "unwritten", True))
    return out


LABELLED = "labelled"  # items column: 1 labelled, 0 unlabelled (absent before format 3: all 1)
ITEMS_DAMAGED = ("the items table cannot be repaired in place: restore the store from a copy, "
                 "or extract again into a new store")


def _read_items(backend: Backend) -> ItemsTable:
    attrs = backend.get_attrs("items")
    cols = set(backend.children("items"))
    core = {"id", "path", "sha256", "duration", "split", "labels"}
    missing = core - cols
    if missing:
        raise EastkdError(f"{backend.path}: items table lacks {sorted(missing)}; the store is "
                          "damaged or half-written: recreate it with `eastkd extract`")
    try:
        extra = {c: backend.read(f"items/{c}", allow_missing=True)
                 for c in sorted(cols - core - {"label", LABELLED})}
        labelled = (backend.read(f"items/{LABELLED}").astype(bool) if LABELLED in cols
                    else None)  # a store before format 3: every item labelled
        return ItemsTable(
            ids=[str(x) for x in backend.read("items/id")],
            paths=[str(x) for x in backend.read("items/path")],
            sha256=[str(x) for x in backend.read("items/sha256")],
            durations=backend.read("items/duration", allow_missing=True).astype(np.float32),
            splits=[str(x) for x in backend.read("items/split")],
            labels=backend.read("items/labels").astype(np.uint8),
            class_names=list(attrs.get("class_names", [])),
            multi_label=bool(attrs.get("multi_label", False)),
            extra=extra,
            labelled=labelled,
        )
    except StoreDamageError as e:
        raise StoreDamageError(f"{str(e).split('; run `eastkd verify')[0]}; "
                               f"{ITEMS_DAMAGED}") from None


def check_items(path: str, items: ItemsTable, items_attrs: dict[str, Any],
                dataset: dict[str, Any]) -> None:
    """Refuse an items table whose content checksum (format 2) or dataset fingerprint differs
    from the one recorded at creation: a damaged table would misalign every array."""
    stored = items_attrs.get("checksum")
    if stored is not None and stored != items.content_sha256():
        raise StoreDamageError(f"{path}: items table damaged (checksum mismatch); "
                               f"{ITEMS_DAMAGED}")
    fp = dataset.get("fingerprint")
    if fp is not None and fp != items.fingerprint():
        raise StoreDamageError(f"{path}: items table does not match the dataset fingerprint "
                               f"recorded at creation; {ITEMS_DAMAGED}")


def _item_columns(items: ItemsTable) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """The items table as stored: column name -> (values, dimension names). The one place that
    lays out the columns, for writing a new table and for rewriting one in place."""
    n = len(items)
    item = (ITEM_DIM,)
    cols: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {
        name: (np.asarray(col, dtype=object), item)
        for name, col in (("id", items.ids), ("path", items.paths), ("sha256", items.sha256),
                          ("split", items.splits))}
    cols["duration"] = (np.asarray(items.durations, dtype=np.float32), item)
    labels = np.asarray(items.labels, dtype=np.uint8).reshape(n, -1)
    if labels.shape[1] == 0:  # unlabelled data: one all-zero column keeps the layout uniform
        labels = np.zeros((n, 1), dtype=np.uint8)
    cols["labels"] = (labels, dimension_names("items", "labels", 1))
    cols["label"] = (items.label, item)
    cols[LABELLED] = (items.labelled_mask.astype(np.uint8), item)
    for name, col in items.extra.items():
        col = np.asarray(col)
        cols[name] = (col.astype(object if col.dtype.kind in "OUS" else col.dtype), item)
    return cols


def _write_items(backend: Backend, items: ItemsTable) -> None:
    n = len(items)
    ck = chunk_items(256, n)
    backend.create_group("items", {"class_names": list(items.class_names),
                                   "multi_label": bool(items.multi_label)})
    for name, (values, dims) in _item_columns(items).items():
        backend.create_array(f"items/{name}", values.shape, (ck, *values.shape[1:]),
                             values.dtype, data=values, dims=dims)
    # the checksum of the table as it reads back, so that any later change is caught
    backend.update_attrs("items", {"checksum": _read_items(backend).content_sha256()})


def _write_item_columns(backend: Backend, items: ItemsTable) -> None:
    """Overwrite the columns of an existing items table in place (same rows and columns)."""
    for name, (values, dims) in _item_columns(items).items():
        if name == LABELLED and not backend.exists(f"items/{name}"):  # before format 3
            if items.has_unlabelled:
                backend.create_array(f"items/{name}", values.shape,
                                     (chunk_items(256, len(items)),), values.dtype, data=values,
                                     dims=dims)
            continue
        backend.write(f"items/{name}", slice(0, len(items)), values)


def open_store(path: str, mode: str = "r") -> Store:
    """Open an existing store; ``mode`` is ``"r"`` (read) or ``"r+"`` (read and write).

    ``path`` is a local path (.zarr folder, .zip, .h5) or an fsspec URL of a Zarr store
    (``s3://bucket/x.zarr``; see :mod:`eastkd.store.location`)."""
    if not location.is_url(path) and not os.path.exists(location.local_path(path)):
        raise StoreNotFoundError(f"{path}: no such store; create it with `eastkd extract`")
    if location.is_url(path):
        location.check_remote_kind(path)
    if location.is_url(path) and not location.url_exists(path):
        raise StoreNotFoundError(f"{path}: no such store; create it with `eastkd extract` "
                                 "(check the URL and --storage-option endpoint_url)")
    return Store(path, open_backend(path, "r" if mode == "r" else "a"))


def _write_errors_as_one_line(fn: Callable[..., Store]) -> Callable[..., Store]:
    """A full disk or a permission error while creating the store becomes one line."""

    @functools.wraps(fn)
    def wrapper(path: str, *args: Any, **kwargs: Any) -> Store:
        try:
            return fn(path, *args, **kwargs)
        except OSError as e:
            err = write_failure(str(path), "a new store", e)
            if err is None or isinstance(e, EastkdError):
                raise
            raise err from None

    return wrapper


@_write_errors_as_one_line
def create_store(path: str, items: ItemsTable, dataset: dict[str, Any]) -> Store:
    """Create a new store holding the items table, atomically.

    A local store is built under a temporary name beside ``path`` and renamed into place, so
    no reader (and no concurrent creator) ever sees a half-written items table. If another
    process created ``path`` first, that store is opened instead (after the dataset check).
    Object stores cannot rename: a URL store gets its items table first and the root
    attributes with the ``format`` marker last (see :func:`_create_remote`).
    """
    if location.is_url(path):
        return _create_remote(path, items, dataset)
    path = location.local_path(path)
    if os.path.exists(path):
        raise EastkdError(f"{path} already exists")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path.rstrip("/")))
    tmp = os.path.join(parent, f".{base}.partial-{uuid.uuid4().hex[:8]}{ext}")
    backend = open_backend(tmp, create=True)
    try:
        backend.update_attrs("", _root_attrs(items, dataset))
        _write_items(backend, items)
        backend.close()
        try:
            if os.path.isdir(tmp):
                os.rename(tmp, path)  # fails if another creator's directory is already there
            else:
                os.link(tmp, path)  # never replaces an existing file
        except OSError:
            if not os.path.exists(path):
                raise
    except BaseException:
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else (
            os.path.exists(tmp) and os.remove(tmp))
        raise
    if os.path.exists(tmp):  # lost the race against another creator
        shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else os.remove(tmp)
    return open_for_dataset(path, items)


def _root_attrs(items: ItemsTable, dataset: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "eastkd_version": eastkd_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": {**dataset, "fingerprint": items.fingerprint(), "n_items": len(items)},
    }


def _create_remote(url: str, items: ItemsTable, dataset: dict[str, Any]) -> Store:
    """Create a store at a URL "marker last": the root group is written empty, then the items
    table, then the root attributes with the ``format`` marker in one object PUT (atomic on
    object stores). A reader or ``extract`` that finds no marker treats what is there as a
    half-created store: ``extract`` takes it over (clears and recreates it)."""
    if store_exists(url):
        raise EastkdError(f"{url} already exists")
    backend = open_backend(url, create=True)
    try:
        _write_items(backend, items)
        backend.update_attrs("", _root_attrs(items, dataset))  # the marker: last
    finally:
        backend.close()
    return open_for_dataset(url, items)


def open_for_dataset(path: str, items: ItemsTable) -> Store:
    """Open ``path`` for writing and check it was made for exactly this dataset."""
    store = open_store(path, "r+")
    theirs = store.dataset_fingerprint
    ours = items.fingerprint()
    if theirs != ours:
        d = store.attrs.get("dataset", {})
        store.close()
        raise StoreMismatchError(
            f"{path} was written for another dataset ({d.get('name', '?')}, {d.get('n_items', '?')}"
            f" items, fingerprint {theirs[:12]}) than this one ({len(items)} items, "
            f"{ours[:12]}): choose another store path"
        )
    return store
