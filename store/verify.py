"""``eastkd verify``: read every chunk of a store and say what is damaged; optionally repair.

Checks, in order: the root attributes, the items table (per-chunk checksums, its content
checksum, the dataset fingerprint recomputed from it, unique ids, valid splits, the stored
``label`` column), and every section: that each expected array's metadata is present and
parses, array shapes, every chunk of every array (its checksum, that it decodes, that it is
present where rows are marked done), status values, and provenance (the dataset fingerprint
each section records; the embeddings a target was computed from, and whether their rows were
recomputed since the targets were fitted: the write ``generation``).

Repair marks the rows of every damaged or missing chunk *pending* (their status written, the
damaged chunk replaced by the fill value), so the same ``eastkd extract`` or ``eastkd
compress`` command recomputes exactly them. Damage to the items table or to the attributes
cannot be repaired in place: the store is restored from a copy or extracted again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
from eastkd.progress import Progress, progress_bar

from eastkd.store import digest as content_digest
from eastkd.store import location
from eastkd.store.backends.base import Backend
from eastkd.store.damage import is_nan_fill, missing_rows, reason_of, rows_text
from eastkd.errors import EastkdError, StoreDamageError
from eastkd.store.items import SPLITS, ItemsTable
from eastkd.store.store import (
    OK,
    PENDING,
    SECTION_KINDS,
    SKIPPED,
    Section,
    Store,
    metadata_problems,
    open_store,
)

_READ_BYTES = 32 << 20  # decoded bytes per read call while streaming an array


@dataclass
class Finding:
    """One problem found: where, which item rows, what, and whether ``--repair`` fixes it."""

    path: str
    problem: str
    rows: tuple[int, int] | None = None
    repairable: bool = False
    damage: bool = True  # False: a warning (e.g. an array without checksums)

    def line(self) -> str:
        where = f"{self.path} {rows_text(*self.rows)}" if self.rows else self.path
        return f"{where}: {self.problem}"


@dataclass
class VerifyReport:
    """What ``verify`` read and found (``as_dict`` is the ``--json`` output)."""

    store: str
    backend: str = ""
    format_version: int | None = None
    items: int = 0
    arrays: int = 0
    chunks: int = 0
    bytes_decoded: int = 0  # decoded (status, items, params; every chunk with deep)
    bytes_checked: int = 0  # raw chunk bytes whose checksum was checked without decoding
    bytes_on_disk: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)  # section -> rows marked pending
    rerun: list[Rerun] = field(default_factory=list)  # commands that recompute repaired rows
    digest: str | None = None  # the store digest computed from the content read
    digest_sections: dict[str, str | None] = field(default_factory=dict)
    digest_note: str = ""  # why there is no digest
    digest_checked: bool = False  # computed from the content (--deep, --digest), not recorded

    @property
    def damaged(self) -> bool:
        return any(f.damage for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = not self.damaged
        return d


# ---------------------------------------------------------------------------------------------
# reading chunks


def _chunk_blocks(backend: Backend, path: str) -> Iterator[tuple[int, int, int]]:
    """``(lo, hi, chunk)``: row ranges of whole item chunks, ~32 MB decoded per range."""
    info = backend.info(path)
    shape, chunk = info.shape, info.chunks[0]
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * max(1, info.dtype.itemsize)
    step = chunk * max(1, _READ_BYTES // max(1, row_bytes * chunk))
    for lo in range(0, shape[0], step):
        yield lo, min(shape[0], lo + step), chunk


def _read_chunks(backend: Backend, path: str, lo: int, hi: int, chunk: int
                 ) -> Iterator[tuple[int, int, np.ndarray | None, str]]:
    """``(lo, hi, data or None, reason)`` per chunk of rows ``lo:hi``: one read for the whole
    range, chunk by chunk only when it fails (to name every damaged chunk)."""
    try:
        yield lo, hi, backend.read(path, slice(lo, hi), allow_missing=True), ""
        return
    except StoreDamageError:
        pass
    for c_lo in range(lo, hi, chunk):
        c_hi = min(hi, c_lo + chunk)
        try:
            yield c_lo, c_hi, backend.read(path, slice(c_lo, c_hi), allow_missing=True), ""
        except StoreDamageError as e:
            yield c_lo, c_hi, None, str(e).split(": ", 2)[-1].split(";")[0]
        except Exception as e:  # defensive: a codec error the backend did not translate
            yield c_lo, c_hi, None, reason_of(e)


class _Reader:
    """Streams arrays chunk by chunk, counting what it read and showing progress."""

    def __init__(self, report: VerifyReport, backend: Backend, total: int, progress: Progress):
        self.report, self.backend = report, backend
        self.bar = progress_bar(total=total, desc="verify", unit="chunk", progress=progress)
        self._pool: ThreadPoolExecutor | None = None
        self._raw: Future[dict[str, list[tuple[int, int, str]]]] | None = None
        self._raw_paths: set[str] = set()

    def chunks(self, path: str) -> Iterator[tuple[int, int, np.ndarray | None, str]]:
        """Every chunk of ``path`` decoded: ``(lo, hi, data or None, problem)``."""
        self.report.arrays += 1
        for lo, hi, chunk in _chunk_blocks(self.backend, path):
            for c_lo, c_hi, data, reason in _read_chunks(self.backend, path, lo, hi, chunk):
                k = -(-(c_hi - c_lo) // chunk)
                self.report.chunks += k
                self.bar.update(k)
                if data is not None and data.dtype != object:
                    self.report.bytes_decoded += data.nbytes
                yield c_lo, c_hi, data, reason

    def start_raw(self, paths: list[str]) -> None:
        """Check the raw chunks of ``paths`` in a background thread (I/O bound), while the
        main thread decodes the items table and the statuses (CPU bound)."""
        self._pool = ThreadPoolExecutor(1)
        self._raw = self._pool.submit(self.backend.chunk_checks, paths, self.bar.update)
        self._raw_paths = set(paths)

    def raw_chunks(self, path: str) -> Iterator[tuple[int, str]] | None:
        """Every stored chunk's checksum checked on its raw bytes: ``(index, problem)``;
        None where the backend cannot (decode instead)."""
        if self._raw is not None and path in self._raw_paths:
            checks = self._raw.result().get(path)
        else:
            checks = self.backend.chunk_checks([path], self.bar.update).get(path)
        if checks is None:
            return None
        self.report.arrays += 1
        return self._count(checks)

    def _count(self, checks: list[tuple[int, int, str]]) -> Iterator[tuple[int, str]]:
        for index, nbytes, problem in checks:
            self.report.chunks += 1
            self.report.bytes_checked += nbytes
            yield index, problem

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        self.bar.close()


def _chunk_count(backend: Backend, paths: list[str]) -> int:
    infos = [backend.info(p) for p in paths]
    return sum(-(-i.shape[0] // i.chunks[0]) for i in infos)


# ---------------------------------------------------------------------------------------------
# the checks


def _check_items(store: Store, reader: _Reader, report: VerifyReport) -> ItemsTable | None:
    """The items table read (every chunk's checksum checked on the way), then its content
    checksum and fingerprint; None when damaged (the first damage found is reported)."""
    paths = [f"items/{c}" for c in store.backend.children("items")]
    try:
        items = store.items
    except EastkdError as e:
        report.findings.append(Finding("items", str(e).split(": ", 1)[-1]))
        return None
    finally:
        n_chunks = _chunk_count(store.backend, paths)
        report.arrays += len(paths)
        report.chunks += n_chunks
        reader.bar.update(n_chunks)
    _check_items_content(store, items, report)
    return items


def _check_items_content(store: Store, items: ItemsTable, report: VerifyReport) -> None:
    n = len(items)
    if len(set(items.ids)) != n or any(not i for i in items.ids):
        report.findings.append(Finding("items/id", "ids are empty or not unique"))
    bad_splits = sorted(set(items.splits) - set(SPLITS))
    if bad_splits:
        report.findings.append(Finding("items/split", f"unknown splits {bad_splits}"))
    if store.backend.exists("items/label"):
        label = store.backend.read("items/label")
        if not np.array_equal(label, items.label):
            report.findings.append(Finding("items/label", "disagrees with items/labels"))
    wrong = ~items.labelled_mask & ((np.asarray(items.splits, dtype=object) != "train")
                                    | np.asarray(items.labels).any(axis=1))
    if wrong.any():
        first = items.ids[int(np.flatnonzero(wrong)[0])]
        report.findings.append(Finding("items/labelled", f"{int(wrong.sum())} unlabelled items "
                                       f"outside train or with labels (first: {first}); "
                                       "unlabelled items must be train items with no labels"))
    expected = store.attrs.get("dataset", {}).get("n_items")
    if expected is not None and int(expected) != n:
        report.findings.append(Finding("items", f"holds {n} items, the root attributes say "
                                                f"{expected}"))


def _check_shapes(sec: Section, n: int, report: VerifyReport) -> bool:
    ok = True
    for name in sec.array_names() + ["status", "error"]:
        path = f"{sec.path}/{name}"
        if not sec.backend.exists(path):
            report.findings.append(Finding(path, "array is missing"))
            ok = False
        elif (rows := sec.backend.info(path).shape[0]) != n:
            report.findings.append(Finding(path, f"has {rows} rows, the "
                                                 f"items table {n}"))
            ok = False
    return ok


class _SectionCheck:
    """One section's chunks against its status; collects the rows a repair marks pending."""

    def __init__(self, sec: Section, reader: _Reader, report: VerifyReport,
                 leaves: dict[str, content_digest.Leaves], content: bool = False) -> None:
        self.sec, self.reader, self.report = sec, reader, report
        self.backend = sec.backend
        self.leaves = leaves  # array path -> hashes of its chunks as read (for the digest)
        # decode and hash every data array (checked against the recorded content digests);
        # False: checksums on raw bytes where the backend can
        self.content = content
        self.pending_rows: set[int] = set()
        self.reset: list[tuple[str, int]] = []  # (array path, chunk index) to replace by fill

    def damaged(self, path: str, lo: int, hi: int, problem: str, chunk: int) -> None:
        self.report.findings.append(Finding(path, problem, (lo, hi), repairable=True))
        self.pending_rows.update(range(lo, hi))
        self.reset.extend((path, c) for c in range(lo // chunk, -(-hi // chunk)))

    def status(self, n: int) -> np.ndarray:
        """The status, with damaged chunks read as pending (and repaired as such); the
        ``error`` chunks are checked too (on their raw bytes where possible)."""
        status = np.zeros(n, dtype=np.uint8)
        path = f"{self.sec.path}/status"
        chunk = self.backend.info(path).chunks[0]
        for lo, hi, data, reason in self.reader.chunks(path):
            if data is None:
                self.damaged(path, lo, hi, reason, chunk)
            else:
                status[lo:hi] = data
        self._check_errors(n)
        invalid = np.flatnonzero(status > SKIPPED)
        if invalid.size:
            self.report.findings.append(Finding(f"{self.sec.path}/status",
                                                f"{invalid.size} invalid status values",
                                                (int(invalid[0]), int(invalid[-1]) + 1), True))
            self.pending_rows.update(invalid.tolist())
        return status

    def _check_errors(self, n: int) -> None:
        path = f"{self.sec.path}/error"
        chunk = self.backend.info(path).chunks[0]
        raw = self.reader.raw_chunks(path)
        if raw is not None:
            for index, problem in raw:
                if problem:
                    self.damaged(path, index * chunk, min(n, (index + 1) * chunk), problem,
                                 chunk)
            return
        for lo, hi, data, reason in self.reader.chunks(path):
            if data is None:
                self.damaged(path, lo, hi, reason, chunk)

    def data(self, name: str, status: np.ndarray, deep: bool) -> None:
        path = f"{self.sec.path}/{name}"
        if not self.backend.info(path).checksummed:
            self.report.findings.append(Finding(path, "chunks carry no checksum (written by "
                                                      "format 1)", damage=False))
        # the recorded digests are read (and so checked) always: they are small
        recorded = self._recorded(name, len(status))
        raw = None if deep or self.content else self.reader.raw_chunks(path)
        if raw is not None:
            self._check_raw(path, raw, status)
        else:
            self._check_decoded(path, status, recorded if self.content else None)

    def _recorded(self, name: str, n: int) -> list[bytes | None] | None:
        """The content digests recorded for array ``name`` (b"" where none was, None for a
        damaged digest chunk, reported here); None where the section records none."""
        dpath = content_digest.digest_path(self.sec.path, name)
        if not self.backend.exists(dpath):
            return None
        chunk = self.backend.info(f"{self.sec.path}/{name}").chunks[0]
        out: list[bytes | None] = []
        for lo, hi, data, reason in self.reader.chunks(dpath):
            if data is None:
                rows = (lo * chunk, min(n, hi * chunk))
                self.report.findings.append(Finding(dpath, f"{reason} (the content digests of "
                                                           "these rows)", rows, repairable=True))
                self.pending_rows.update(range(*rows))
                self.reset.extend((dpath, c) for c in range(lo, hi))
                out += [None] * (hi - lo)
            else:
                out += [row.tobytes() if row.any() else b"" for row in data]
        return out

    def _check_raw(self, path: str, raw: Iterator[tuple[int, str]], status: np.ndarray) -> None:
        """Checksums on the raw bytes; chunks absent where rows are done (by listing)."""
        chunk = self.backend.info(path).chunks[0]
        present = set()
        for index, problem in raw:
            present.add(index)
            if problem:
                lo = index * chunk
                self.damaged(path, lo, min(len(status), lo + chunk), problem, chunk)
        self._absent(path, present, status, chunk, done=status != PENDING)

    def _absent(self, path: str, present: set[int], status: np.ndarray, chunk: int,
                done: np.ndarray) -> None:
        for c in sorted(set(np.flatnonzero(done) // chunk) - present):
            lo = int(c) * chunk
            self.damaged(path, lo, min(len(status), lo + chunk),
                         "chunk missing (rows marked done have no data)", chunk)

    def _check_decoded(self, path: str, status: np.ndarray,
                       recorded: list[bytes | None] | None = None) -> None:
        """Every chunk decoded and hashed (against its ``recorded`` content digest); NaN-fill
        rows or (format 1) absent chunks where rows are done."""
        info = self.backend.info(path)
        chunk = info.chunks[0]
        nan_fill = is_nan_fill(info.dtype, info.fill_value)
        leaves: list[bytes | None] = [None] * -(-len(status) // chunk)
        reported = len(self.reset)
        stored = None if nan_fill else self.backend.stored_chunks(path)
        if stored is not None:  # format 1: fill 0, so listing tells; skipped rows may be absent
            self._absent(path, stored, status, chunk, done=status == OK)
        for lo, hi, data, reason in self.reader.chunks(path):
            if data is None:
                self.damaged(path, lo, hi, reason, chunk)
                continue
            if nan_fill:
                gone = missing_rows(data, np.arange(lo, hi))
                gone = gone[status[gone] != PENDING]
                for c in np.unique(gone // chunk):
                    c_lo = int(c) * chunk
                    self.damaged(path, c_lo, min(hi, c_lo + chunk),
                                 "chunk missing (rows marked done read as the fill value)",
                                 chunk)
            damaged = {c for p, c in self.reset[reported:] if p == path}
            self._hash_chunks(path, lo, data, chunk, status, recorded, leaves, damaged)
        if all(leaf is not None for leaf in leaves):
            self.leaves[path] = leaves  # type: ignore[assignment]

    def _hash_chunks(self, path: str, lo: int, data: np.ndarray, chunk: int,
                     status: np.ndarray, recorded: list[bytes | None] | None,
                     leaves: list[bytes | None], damaged: set[int]) -> None:
        """Hash each chunk of the decoded rows ``lo:lo+len(data)``; a chunk with rows done
        whose hash differs from the one recorded when it was written is damage (rewritten
        since, e.g. with a fresh codec checksum), unless already reported (``damaged``)."""
        for c_lo in range(lo, lo + len(data), chunk):
            c_hi = min(lo + len(data), c_lo + chunk)
            leaf = content_digest.chunk_hash(data[c_lo - lo:c_hi - lo])
            leaves[c_lo // chunk] = leaf
            want = None if recorded is None else recorded[c_lo // chunk]
            if want is None or leaf == want or c_lo // chunk in damaged \
                    or (status[c_lo:c_hi] == PENDING).all():
                continue
            self.damaged(path, c_lo, c_hi, "content differs from the digest recorded when it "
                         "was written (changed since)" if want else "no content digest "
                         "recorded for rows marked done", chunk)

    def params(self) -> None:
        base = f"{self.sec.path}/params"
        for name in self.backend.children(base):
            path = f"{base}/{name}"
            for lo, hi, data, reason in self.reader.chunks(path):
                if data is None:
                    self.report.findings.append(Finding(
                        path, f"{reason}; the fitted parameters are lost: repair marks the "
                              "whole section pending (compress fits again)", repairable=True))
                    status = self.backend.info(f"{self.sec.path}/status")
                    self.pending_rows.update(range(status.shape[0]))


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _check_provenance(store: Store, sec: Section, status: np.ndarray,
                      report: VerifyReport) -> None:
    """Fingerprints recorded by the section agree with the store and its source embeddings."""
    attrs = sec.attrs
    fp = attrs.get("dataset_fingerprint")
    dataset = store.attrs.get("dataset", {})
    known = {dataset.get("fingerprint")} | {
        p.get("fingerprint") for p in dataset.get("previous_fingerprints", [])}
    if fp is not None and fp not in known:
        report.findings.append(Finding(sec.path, "written for another dataset (its "
                                                 "dataset_fingerprint differs from the store's)"))
    if sec.kind != "targets" or "source" not in attrs:
        return
    src = attrs["source"]
    try:
        present = store.has_section("embeddings", src)
    except EastkdError:  # its damage is reported with the embeddings themselves
        return
    if not present:
        report.findings.append(Finding(sec.path, f"its source embeddings/{src} is gone",
                                       damage=False))
        return
    emb = Section(store, "embeddings", src)  # its own damage is reported with it
    identity = attrs.get("identity") or {}
    want = identity.get("source_identity_sha256")
    if want is not None and want != _sha(emb.attrs.get("identity")):
        report.findings.append(Finding(sec.path, f"computed from other embeddings than the "
                                                 f"current embeddings/{src}; rerun compress "
                                                 "with --overwrite"))
    stale = stale_targets(store.path, sec.name, attrs, emb.attrs)
    try:
        src_status = emb.status()
    except EastkdError:  # reported with the embeddings themselves
        return
    if stale:  # a note while the embeddings' rows are still being recomputed (after a repair)
        report.findings.append(Finding(sec.path, stale, damage=not (src_status == PENDING).any()))
    both = (status != PENDING) & (src_status != PENDING)
    if ((status[both] == SKIPPED) != (src_status[both] == SKIPPED)).any():
        report.findings.append(Finding(sec.path, f"skipped rows differ from embeddings/{src}",
                                       damage=False))


@dataclass
class Rerun:
    """A command that recomputes a section's pending rows, as data: the ``eastkd`` stage, its
    positional arguments and its options (flag -> value; True for a bare flag, a list for a
    flag given once per value). ``note`` says what the command cannot carry (e.g. options not
    recorded)."""

    stage: str
    args: list[str]
    options: dict[str, Any]
    note: str = ""

    def command(self) -> str:
        """The command line a user types (the note in brackets after it)."""
        parts = ["eastkd", self.stage, *self.args]
        for flag, value in self.options.items():
            if value is True:
                parts.append(f"--{flag}")
            elif isinstance(value, list):  # a repeatable flag, e.g. --unlabelled DIR
                parts += [f"--{flag} {v}" for v in value]
            elif value not in (False, None):
                parts.append(f"--{flag} {value}")
        return " ".join(parts) + (f" ({self.note})" if self.note else "")


def stale_targets(store: str, name: str, attrs: dict[str, Any], source: dict[str, Any]
                  ) -> str | None:
    """Why targets ``name`` (attributes ``attrs``) are older than their source embeddings
    (attributes ``source``), with the command that refits them; None when they are not.
    Every section records a write ``generation``, renewed whenever rows marked done are
    reset (repair, re-hash); targets record the one they were fitted on."""
    if "source_generation" not in attrs or attrs["source_generation"] == source.get(
            "generation"):
        return None
    refit = _compress_hint(store, name, attrs)
    refit.options["overwrite"] = True
    return (f"targets/{name} were fitted on embeddings/{attrs.get('source')} rows that have "
            f"changed since (repaired and recomputed); refit them: {refit.command()}")


def _rerun_hint(store: Store, sec: Section) -> Rerun:
    """The command that recomputes the pending rows of ``sec``, rebuilt from its provenance."""
    if sec.kind == "targets":
        return _compress_hint(store.path, sec.name, sec.attrs)
    keys = [sec.name] if sec.kind == "embeddings" else store.section_names("embeddings")[:1]
    dataset = store.attrs.get("dataset", {})
    src = dataset.get("source") or "DATASET"
    unlabelled = list(dataset.get("unlabelled", [])) or None  # folders: --unlabelled each
    if not keys:
        return Rerun("extract", [src, store.path], {"unlabelled": unlabelled},
                     note=f"with the options of the command that wrote {sec.path}")
    return _extract_hint(store.path, src, keys[0], Section(store, "embeddings", keys[0]).attrs,
                         unlabelled)


def _compress_hint(path: str, name: str, a: dict[str, Any]) -> Rerun:
    ident = a.get("identity") or {}
    return Rerun("compress", [path], {
        "embeddings": a.get("source"), "method": a.get("method"),
        "dim": ident.get("dim", a.get("dim")), "name": name,
        "fit-split": a.get("fit_split", "train"), "whiten": bool(a.get("whiten"))})


def _extract_hint(path: str, source: str, key: str, a: dict[str, Any],
                  unlabelled: list[str] | None = None) -> Rerun:
    ident = a.get("identity") or {}
    opts = a.get("extract_options") or {}
    seg = ident.get("segment") or {}
    recorded = ", ".join(f"{k}={v}" for k, v in (ident.get("teacher_options") or {}).items())
    return Rerun("extract", [source, path], {
        "teacher": ident.get("teacher", key), "key": key, "segment": seg.get("seconds"),
        "crop": seg.get("crop"), "dtype": ident.get("dtype"), "frames": bool(ident.get("frames")),
        "on-error": opts.get("on_error", "fail"), "unlabelled": unlabelled,
        **_views_options(ident.get("views"))},
        note=f"plus the --teacher-opt/--weights it was run with; teacher options recorded: "
             f"{recorded or 'none'}")


def _views_options(views: dict[str, Any] | None) -> dict[str, Any]:
    """The ``extract --views`` options of a recorded views identity (none without views)."""
    if not views:
        return {}
    out: dict[str, Any] = {"views": views.get("k")}
    if views.get("seconds") is not None:
        out["view-seconds"] = views["seconds"]
    if views.get("gain_db"):
        out["view-gain-db"] = views["gain_db"]
    return {**out, "view-seed": str(views.get("seed"))}  # a string: seed 0 is not a False flag


def _pending_note(sec: Section, status: np.ndarray, report: VerifyReport) -> None:
    pending = int((status == PENDING).sum())
    if pending:
        report.findings.append(Finding(sec.path, f"{pending} rows pending (unfinished): the "
                                                 "command that writes it continues it",
                                       damage=False))


def _repair(sec: Section, check: _SectionCheck, report: VerifyReport) -> None:
    """Status pending first (so a killed repair never leaves rows marked done on damaged
    data), then the damaged chunks replaced by the fill value."""
    backend = sec.backend
    rows = np.asarray(sorted(check.pending_rows), dtype=np.int64)
    status_path, error_path = f"{sec.path}/status", f"{sec.path}/error"
    if rows.size:  # first: a killed repair never leaves the change unrecorded
        sec.bump_generation()
    for path, c in check.reset:
        if path in (status_path, error_path):
            backend.reset_chunk(path, c)
    if rows.size:
        status = backend.read(status_path)
        errors = backend.read(error_path)
        status[rows], errors[rows] = PENDING, ""
        for lo, hi in _runs(rows):
            backend.write(error_path, slice(lo, hi), errors[lo:hi])
            backend.write(status_path, slice(lo, hi), status[lo:hi])
        backend.flush()
    for path, c in check.reset:
        if path not in (status_path, error_path):
            backend.reset_chunk(path, c)
    backend.flush()
    report.repaired[sec.path] = int(rows.size)


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs ``(lo, hi)`` of sorted row indices."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, breaks) if r.size]


# ---------------------------------------------------------------------------------------------
# the entry point


def _sections(store: Store, report: VerifyReport) -> tuple[list[Section], list[Section]]:
    """The sections whose metadata reads, and those with an array whose metadata is missing
    or does not parse (each a finding; repairable: the array is deleted and the rows marked
    pending, so the command that wrote it writes it again). A section created but never
    given a status (its writer stopped) is a note."""
    good: list[Section] = []
    broken: list[Section] = []
    for kind in SECTION_KINDS:
        for name in store.section_names(kind):
            problems = metadata_problems(store, kind, name)
            for node, problem, repairable in problems:
                what = ("metadata missing while rows are marked done" if problem == "unwritten"
                        else f"zarr.json {problem}")
                report.findings.append(Finding(node, what, repairable=repairable))
            if problems:
                broken.append(Section(store, kind, name))
            elif store.has_section(kind, name):
                good.append(store.section(kind, name))
            else:
                report.findings.append(Finding(f"{kind}/{name}", "unfinished: created, but "
                                               "its writer stopped before its status; the "
                                               "command that writes it continues it",
                                               damage=False))
    return good, broken


def _repair_metadata(store: Store, sec: Section, report: VerifyReport) -> None:
    """Delete the arrays of ``sec`` whose metadata is lost, then mark every row pending (a
    lost ``status`` is recreated pending by the next writer), so that the command that wrote
    the section writes it again."""
    backend = sec.backend
    status = f"{sec.path}/status"
    for node, _, repairable in metadata_problems(store, sec.kind, sec.name):
        if repairable and backend.orphaned(node):
            backend.delete_orphan(node)
    n = report.items
    sec.bump_generation()
    if backend.exists(status):
        if backend.exists(f"{sec.path}/error"):
            backend.write(f"{sec.path}/error", slice(None), np.full(n, "", dtype=object))
        backend.write(status, slice(None), np.zeros(n, dtype=np.uint8))
        backend.flush()
    report.repaired[sec.path] = n


def _array_paths(store: Store, sections: list[Section]) -> list[str]:
    paths = [f"items/{c}" for c in store.backend.children("items")]
    for sec in sections:
        paths += [f"{sec.path}/{a}" for a in sec.array_names() + ["status", "error"]
                  if store.backend.exists(f"{sec.path}/{a}")]
        paths += [f"{sec.path}/params/{p}"
                  for p in store.backend.children(f"{sec.path}/params")]
        paths += [content_digest.digest_path(sec.path, a) for a in sec.array_names()
                  if sec.records_digest(a)]
    return paths


def _check_section(store: Store, sec: Section, reader: _Reader, report: VerifyReport,
                   leaves: dict[str, content_digest.Leaves], content: bool
                   ) -> tuple[_SectionCheck, np.ndarray] | None:
    """Everything of a section but its data arrays: shapes, status, parameters, provenance
    (done while the data chunks' checksums are still being computed in the background)."""
    if not _check_shapes(sec, report.items, report):
        return None
    check = _SectionCheck(sec, reader, report, leaves, content)
    status = check.status(report.items)
    check.params()
    _check_provenance(store, sec, status, report)
    return check, status


def _check_section_data(store: Store, check: _SectionCheck, status: np.ndarray,
                        report: VerifyReport, repair: bool, deep: bool) -> None:
    """The section's data arrays, then the command that recomputes what is damaged or
    pending (and, with ``repair``, the damaged rows marked pending)."""
    sec = check.sec
    for name in sec.array_names():
        check.data(name, status, deep)
    if check.pending_rows or check.reset:
        report.rerun.append(_rerun_hint(store, sec))
        if repair:
            _repair(sec, check, report)
    elif (status == PENDING).any():
        _pending_note(sec, status, report)
        report.rerun.append(_rerun_hint(store, sec))


def verify(path: str, repair: bool = False, progress: Progress = False,
           deep: bool = False, expected_digest: str | None = None) -> VerifyReport:
    """Read every chunk of the store at ``path`` and report damage; ``repair`` marks the rows
    of damaged chunks pending so that extract or compress recomputes exactly them.

    Data chunks of sections that record content digests (format 3) are decoded and hashed
    against them only with ``deep`` (or ``expected_digest``), which decodes and hashes every
    chunk; by default chunks are checked on their raw bytes where the backend can (Zarr:
    crc32c; HDF5: fletcher32), about as fast as reading them, and the digest reported is the
    one recorded (``digest_checked`` False). ``expected_digest`` (a digest, or a JSON file from
    ``info``/``verify --json``) is compared with the digest computed from the content."""
    t0 = time.perf_counter()
    report = VerifyReport(store=path)
    with location.uncached(), open_store(path, "r+" if repair else "r") as store:
        attrs = store.attrs
        report.backend = store.backend_name
        report.format_version = int(attrs.get("format_version", 0))
        report.bytes_on_disk = store.nbytes_stored()
        if report.format_version < 2:
            report.findings.append(Finding("/", f"format version {report.format_version}: "
                                                "arrays written before version 2 carry no "
                                                "checksums", damage=False))
        sections, broken = _sections(store, report)
        total = _chunk_count(store.backend, _array_paths(store, sections))
        reader = _Reader(report, store.backend, total, progress)
        content = deep or expected_digest is not None
        if not content:
            reader.start_raw([f"{sec.path}/{a}" for sec in sections for a in sec.array_names()])
        leaves: dict[str, content_digest.Leaves] = {}
        try:
            items = _check_items(store, reader, report)
            report.items = len(items) if items is not None else \
                int(attrs.get("dataset", {}).get("n_items", 0))
            checks = [_check_section(store, sec, reader, report, leaves, content)
                      for sec in sections]
            for check in checks:
                if check is not None:
                    _check_section_data(store, *check, report, repair, deep)
            for sec in broken:
                report.rerun.append(_rerun_hint(store, sec))
                if repair:
                    _repair_metadata(store, sec, report)
            if items is not None:
                _content_digest(store, leaves if content else None, report)
        finally:
            reader.close()
        if expected_digest is not None:
            _compare_digest(report, expected_digest)
    return _finish(report, t0)


def _content_digest(store: Store, leaves: dict[str, content_digest.Leaves] | None,
                    report: VerifyReport) -> None:
    """The store digest from the content read (``leaves``: hashes of the data chunks, as
    decoded while checking them), or, with ``leaves`` None, from the recorded chunk digests
    (as ``eastkd info`` prints it: not checked against the content)."""
    try:
        d = content_digest.store_digest(store, leaves.get if leaves is not None else None)
    except EastkdError:  # damage the checks above report: no digest for a damaged store
        report.digest_note = "no digest: the store is damaged (see the findings)"
        return
    report.digest, report.digest_sections, report.digest_note = d.digest, d.sections, d.note
    report.digest_checked = leaves is not None and d.digest is not None


def _compare_digest(report: VerifyReport, expected: str) -> None:
    """A finding when the digest computed from the content differs from ``expected`` (a
    digest, or a JSON file holding ``digest`` and ``digest_sections``), naming the sections
    that differ where the file lists them."""
    theirs: dict[str, Any] = {}
    if os.path.isfile(expected):
        with open(expected) as f:
            published = json.load(f)
        expected, theirs = published.get("digest"), published.get("digest_sections") or {}
    if report.digest == expected:
        return
    where = content_digest.differing(report.digest_sections, theirs) if theirs else []
    problem = (f"store digest {report.digest} differs from the expected {expected}"
               if report.digest else f"store digest unknown ({report.digest_note})")
    if where:
        problem += f"; differing: {', '.join(where)}"
    report.findings.append(Finding("/", problem))


def _finish(report: VerifyReport, t0: float) -> VerifyReport:
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
