"""The extract run: open the store, plan the units, and stream batches through the teacher.

Three stages overlap: DataLoader workers decode (``inputs.ClipBatches``), the main thread
resamples, computes log-mel and runs the teacher on its device (``inputs.FrontEnd``), and a
writer thread writes finished chunks and, last, each unit's status (``writer.Writer``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterable

import numpy as np
import torch

from eastkd.errors import RunInterrupted, StoreWriteError
from eastkd.pipeline.core.audio import RESAMPLERS, Segment
from eastkd.pipeline.core.device import resolve_device
from eastkd.pipeline.core.features import LogMelParams
from eastkd.pipeline.core.views import PARAMS, ViewSpec, crop_views, view_params
from eastkd.pipeline.datasets.base import DatasetSpec
from eastkd.pipeline.datasets.manifest import resolve_dataset
from eastkd.pipeline.extract.duplicates import check_duplicates
from eastkd.pipeline.extract.indexing import MTIME, SIZE, build_items_table
from eastkd.pipeline.extract.inputs import ClipBatches, FileRef, FrontEnd, Target, to_device
from eastkd.pipeline.extract.options import FEATURES, ON_ERROR, ExtractOptions, ExtractSummary
from eastkd.pipeline.extract.plan import (
    Batch,
    batch_size_for,
    default_chunk_cap,
    plan_batches,
    plan_units,
    resolve_segment,
)
from eastkd.pipeline.extract.writer import BatchResult, Writer
from eastkd.pipeline.teachers.base import Teacher
from eastkd.pipeline.teachers.loading import (
    check_key,
    check_teacher_name,
    default_key,
    load_teacher,
)
from eastkd.progress import Progress, progress_bar
from eastkd.store import (
    ArraySpec,
    EastkdError,
    ItemsTable,
    Section,
    StoreMismatchError,
    Store,
    concurrent_writers,
    create_store,
    eastkd_version,
    open_for_dataset,
    open_store,
    store_exists,
)


def extract(dataset: str | DatasetSpec, store_path: str, opts: ExtractOptions) -> ExtractSummary:
    """Run ``opts.teacher`` over ``dataset`` and write embeddings and log-mel into the store.

    A new store loads the teacher first (a bad teacher option fails before the dataset is
    hashed); a rerun on a store with nothing left to do returns without loading it."""
    _check_options(opts, store_path)
    spec = resolve_dataset(dataset) if isinstance(dataset, str) else dataset
    t0 = time.perf_counter()
    teacher = None if store_exists(store_path) else load_teacher(opts.teacher,
                                                                 opts.teacher_options)
    store = open_or_create(store_path, spec, opts.progress, opts.resolved_workers(), opts.rehash,
                           opts.allow_duplicates)
    try:
        if teacher is None:
            done = _finished(store, store_path, opts, t0)
            if done is not None:
                return done
            teacher = load_teacher(opts.teacher, opts.teacher_options)
        teacher.set_frames(opts.frames)  # before the probe: PaSST computes frames only if asked
        device = resolve_device(opts.device)
        teacher.to(device)
        teacher.model.eval()
        return _extract_into(store, store_path, teacher, device, opts)
    finally:
        store.close()


def _check_options(opts: ExtractOptions, store_path: str) -> None:
    check_teacher_name(opts.teacher)
    if opts.on_error not in ON_ERROR:
        raise EastkdError(f"--on-error must be one of {ON_ERROR}")
    if opts.dtype not in ("float16", "float32"):
        raise EastkdError("--dtype must be float16 or float32")
    check_key(opts.key or default_key(opts.teacher))
    if opts.resampler not in RESAMPLERS:
        raise EastkdError(f"--resampler {opts.resampler!r}: choose one of "
                          f"{', '.join(RESAMPLERS)}")
    ck = opts.chunk_items
    if ck is not None and (ck < 1 or ck & (ck - 1)):
        raise EastkdError(f"--chunk-items {ck}: must be a power of two (1, 2, 4, ...)")
    opts.view_spec.check()
    if opts.shard[1] > 1 and not concurrent_writers(store_path):
        raise EastkdError("--shard needs a Zarr store (HDF5 has no safe concurrent writers)")


# -- the items table ---------------------------------------------------------------------------


def open_or_create(store_path: str, spec: DatasetSpec, progress: Progress = False,
                   workers: int = 4, rehash: bool = False,
                   allow_duplicates: bool = False) -> Store:
    """The store for this dataset: created with its items table, or reopened after a check.

    Reopening reuses the store's file hashes (keyed on path, size and mtime) and reads no
    audio; ``rehash`` hashes every file again, and files whose bytes changed get their items
    row updated and their rows of every section marked pending (recomputed by this run).
    Duplicate items (same file or same audio) are warned about within a split and refused
    across splits unless ``allow_duplicates`` (recorded in ``dataset.duplicates``).
    """
    dataset = {"name": spec.name, "source": spec.source, "description": spec.description,
               "split": spec.split_info}
    if spec.unlabelled_sources:
        dataset["unlabelled"] = list(spec.unlabelled_sources)
    if not store_exists(store_path):
        items = build_items_table(spec, progress, workers)
        duplicates = check_duplicates(items, allow_duplicates)
        if duplicates:
            dataset["duplicates"] = duplicates
        return create_store(store_path, items, dataset)
    with open_store(store_path) as old:
        known = old.items
        fingerprint = old.dataset_fingerprint
        recorded = old.attrs.get("dataset", {}).get("duplicates") or {}
        old_unlabelled = list(old.attrs.get("dataset", {}).get("unlabelled", []))
    if known.ids != [it.id for it in spec.items]:  # another dataset: refused without hashing
        _check_unlabelled_sources(store_path, old_unlabelled, spec.unlabelled_sources)
        return open_for_dataset(store_path, build_items_table(spec, progress, workers,
                                                              hash_files=False))
    items = build_items_table(spec, progress, workers, known, rehash)
    duplicates = check_duplicates(items, allow_duplicates,
                                  bool(recorded.get("allowed_across_splits")))
    same_files = dataclasses.replace(items, sha256=list(known.sha256))
    if rehash and same_files.fingerprint() == fingerprint:
        store = _apply_rehash(store_path, items, known)
    else:
        store = open_for_dataset(store_path, items)
        if SIZE not in known.extra or MTIME not in known.extra:  # from before the hash cache
            store.update_items(items, "file size and mtime columns added (hash cache)")
    if duplicates and duplicates != recorded and not store.read_only:  # e.g. the flag now
        try:
            store.backend.update_attrs("", {"dataset": {**store.attrs["dataset"],
                                                        "duplicates": duplicates}})
        except StoreWriteError:  # a read-only medium: the run itself may write nothing
            pass
    return store


def _check_unlabelled_sources(store_path: str, old: list[str], new: list[str]) -> None:
    """Name ``--unlabelled`` when a rerun's items differ because its folders do."""
    if old != list(new):
        flags = " ".join(f"--unlabelled {d}" for d in old) or "no --unlabelled"
        raise StoreMismatchError(f"{store_path} was written with {flags}; rerun with the same "
                                 "unlabelled folders, or choose another store path")


def _apply_rehash(store_path: str, items: ItemsTable, known: ItemsTable) -> Store:
    changed = np.flatnonzero(np.asarray(items.sha256) != np.asarray(known.sha256))
    ids = [items.ids[i] for i in changed]
    note = {"rehashed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "changed_items": len(ids), "ids": ids[:1000]}
    store = open_store(store_path, "r+")
    store.update_items(items, "extract --rehash", note)  # and the fresh sizes and mtimes
    if not ids:
        return store
    for kind in ("features", "embeddings", "targets"):
        for name in store.section_names(kind):
            if store.has_section(kind, name):
                section = store.section(kind, name)
                section.reset_rows(changed)
                section.update_attrs({"items_rehashed": note})
    return store


# -- sections ----------------------------------------------------------------------------------


def _features_identity(opts: ExtractOptions, segment: Segment) -> dict[str, Any]:
    lm = opts.logmel
    return {"params": lm.as_dict(), "segment": segment.as_dict(), "dtype": opts.dtype,
            "resampler": opts.resampler}


def _run_identity(opts: ExtractOptions, segment: Segment) -> dict[str, Any]:
    """The part of the embeddings' identity this run's options set (the rest is the
    teacher's)."""
    return {"segment": segment.as_dict(), "dtype": opts.dtype, "frames": bool(opts.frames),
            "resampler": opts.resampler, **opts.view_spec.identity()}


def teacher_request(opts: ExtractOptions, weights_files: Iterable[str]) -> dict[str, Any]:
    """What the teacher's identity follows from, cheap to check without loading it: the
    teacher and options asked for, eastkd's version (its code), and each weights file's size
    and modification time (as the store's hash cache keys audio files). Recorded with the
    embeddings; see :func:`_finished`."""
    files = []
    for path in weights_files:
        try:
            st = os.stat(path)
            files.append({"path": os.path.abspath(path), "size": st.st_size,
                          "mtime_ns": st.st_mtime_ns})
        except OSError:
            files.append({"path": os.path.abspath(path), "missing": True})
    return json.loads(json.dumps({  # as it reads back from the store's attributes
        "teacher": opts.teacher, "teacher_options": opts.teacher_options,
        "eastkd_version": eastkd_version(), "weights_files": files}))


def _finished(store: Store, store_path: str, opts: ExtractOptions,
              t0: float) -> ExtractSummary | None:
    """The summary of a rerun with nothing left to do, found without loading the teacher;
    None when there is work, or when that cannot be told so (the slow path then loads the
    teacher and checks its identity, refusing a mismatch).

    The embeddings' recorded identity stands for the teacher asked for now when the recorded
    :func:`teacher_request` is the same and names weights files (a teacher whose weights are
    built in code, or random, is always loaded); the features' identity and the run's part of
    the embeddings' identity are computed as the slow path would."""
    key = opts.key or default_key(opts.teacher)
    if opts.overwrite or not (store.has_section("features", FEATURES)
                              and store.has_section("embeddings", key)):
        return None
    feat, emb = store.features(FEATURES), store.embeddings(key)
    recorded = emb.attrs.get("teacher_request") or {}
    paths = [f.get("path", "") for f in recorded.get("weights_files", [])]
    if not paths or teacher_request(opts, paths) != recorded:
        return None
    items = store.items
    segment = resolve_segment(opts.segment, opts.crop, items.durations, items.ids)
    if (store.identity_diff("features", FEATURES, _features_identity(opts, segment))
            or store.identity_diff("embeddings", key, _run_identity(opts, segment),
                                   partial=True)):
        return None
    unit = max(feat.unit, emb.unit)
    todo, already = plan_units(len(items), unit, opts.shard, opts.units, emb.status(),
                               feat.status())
    if todo:
        return None
    return ExtractSummary(
        store=store_path, key=key, teacher=str(emb.attrs.get("teacher", opts.teacher)),
        items=len(items), written=0, skipped_now=0, already_done=already,
        seconds=time.perf_counter() - t0, audio_seconds=0.0, forward_seconds=0.0,
        skipped=emb.skipped())


def _sections(store: Store, teacher: Teacher, device: torch.device, opts: ExtractOptions,
              segment: Segment, batch_size: int, key: str) -> tuple[Section, Section, int]:
    """The features and embeddings sections (created if needed) and the frames per clip."""
    views = opts.view_spec
    views.check(segment)
    # before anything is written; the teacher hears one view (the segment when K = 1)
    t_frames = _probe(teacher, device, views.view_segment(segment), opts.frames)
    lm = opts.logmel
    n_frames = lm.n_frames(segment.samples(lm.sample_rate))
    cap = opts.chunk_items or default_chunk_cap(len(store.items), batch_size)
    feat = store.require_section(
        "features", FEATURES, {"values": ArraySpec((lm.n_mels, n_frames), opts.dtype)},
        attrs={"kind": "log-mel", "params": lm.as_dict(), "segment": segment.as_dict(),
               "resampler": opts.resampler, "layout": "items x mels x frames",
               "eastkd_version": eastkd_version()},
        identity=_features_identity(opts, segment),
        overwrite=opts.overwrite, max_chunk_items=cap,
    )
    arrays = _embedding_arrays(views, teacher.embedding_dim, t_frames, opts.dtype)
    emb = store.require_section(
        "embeddings", key, arrays,
        attrs={"teacher": teacher.name, "weights_sha256": teacher.weights_sha256,
               "teacher_parameters": teacher.num_parameters, "sample_rate": teacher.sample_rate,
               "embedding_dim": teacher.embedding_dim, "frame_rate": teacher.frame_rate,
               "frame_offset": float(teacher.frame_offset),
               "n_frames": t_frames, "pooling": teacher.pooling,
               "min_seconds": teacher.min_seconds, "segment": segment.as_dict(),
               "eastkd_version": eastkd_version(),
               "dataset_fingerprint": store.dataset_fingerprint,
               "extract_options": {"batch_size": batch_size, "dtype": opts.dtype,
                                   "frames": opts.frames, "crop": opts.crop,
                                   "segment": segment.seconds, "on_error": opts.on_error,
                                   "resampler": opts.resampler, "device": device.type,
                                   "autocast_float16": teacher.autocast_on(device)},
               "teacher_request": teacher_request(opts, teacher.weights_files),
               **_views_attrs(views, segment, opts)},
        identity={"teacher": teacher.name, "weights_sha256": teacher.weights_sha256,
                  "teacher_options": {k: teacher.options[k] for k in sorted(teacher.options)},
                  "sample_rate": teacher.sample_rate, **_run_identity(opts, segment)},
        overwrite=opts.overwrite, max_chunk_items=cap,
    )
    return feat, emb, t_frames


def _embedding_arrays(views: ViewSpec, dim: int, t_frames: int,
                      dtype: str) -> dict[str, ArraySpec]:
    """The embeddings section's arrays: ``clip`` (D), ``frames`` (T x D) if asked for; with K
    views a view axis after the item axis and ``views`` (K x 3, float64) of their parameters."""
    if not views.on:
        arrays = {"clip": ArraySpec((dim,), dtype)}
        if t_frames:
            arrays["frames"] = ArraySpec((t_frames, dim), dtype)
        return arrays
    k = views.k
    arrays = {"clip": ArraySpec((k, dim), dtype, ("view", "dim")),
              "views": ArraySpec((k, len(PARAMS)), np.float64, ("view", "param"))}
    if t_frames:
        arrays["frames"] = ArraySpec((k, t_frames, dim), dtype, ("view", "frame", "dim"))
    return arrays


def _views_attrs(views: ViewSpec, segment: Segment, opts: ExtractOptions) -> dict[str, Any]:
    """The ``views`` attribute of a section with views (none for K = 1)."""
    if not views.on:
        return {}
    return {"views": {"k": views.k, "seconds": views.view_segment(segment).seconds,
                      "gain_db": views.gain_db, "seed": views.seed, "params": list(PARAMS),
                      "offset_grid_seconds": opts.logmel.hop_length / opts.logmel.sample_rate,
                      "layout": "clip: items x views x dim; frames: items x views x frames x "
                                "dim; views: items x views x (offset_seconds, gain_db, seed)"}}


def _probe(teacher: Teacher, device: torch.device, segment: Segment, frames: bool) -> int:
    """Run the teacher once at the real segment length (this learns a wrapped module's
    embedding size); the frames per clip when ``frames`` is asked for, else 0."""
    probe = teacher.probe(segment.samples(teacher.sample_rate), device)
    if not frames:
        return 0
    if teacher.frame_rate is None or probe.frames is None:
        raise EastkdError(f"teacher {teacher.name!r} has no frame-level embeddings; drop --frames")
    return int(probe.frames.shape[1])


# -- the run -----------------------------------------------------------------------------------


def extract_into(store: Store, store_path: str, teacher: Teacher, device: torch.device,
                 opts: ExtractOptions) -> ExtractSummary:
    """Fill ``store`` (open for writing, items table written) with a loaded teacher: what a
    distributed task runs for its ``opts.units`` without re-hashing the dataset."""
    _check_options(opts, store_path)
    return _extract_into(store, store_path, teacher, device, opts)


def _extract_into(store: Store, store_path: str, teacher: Teacher, device: torch.device,
                  opts: ExtractOptions) -> ExtractSummary:
    key = opts.key or default_key(opts.teacher)  # checked by _check_options
    items = store.items
    n = len(items)
    segment = resolve_segment(opts.segment, opts.crop, items.durations, items.ids)
    batch_size = batch_size_for(opts.batch_size, opts.batch_seconds, segment)
    feat, emb, t_frames = _sections(store, teacher, device, opts, segment, batch_size, key)
    unit = max(feat.unit, emb.unit)
    todo, already = plan_units(n, unit, opts.shard, opts.units, emb.status(), feat.status())
    batches = plan_batches(todo, batch_size)

    lm = opts.logmel
    targets = [Target(teacher.sample_rate, segment.samples(teacher.sample_rate)),
               Target(lm.sample_rate, segment.samples(lm.sample_rate))]
    front = FrontEnd(targets, segment.crop, opts.resampler, lm, device)
    workers = opts.resolved_workers()
    in_workers = device.type == "cpu" and workers > 0  # the CPU front end overlaps the teacher
    files = [FileRef(p, s, int(z), int(m)) for p, s, z, m in
             zip(items.paths, items.sha256, _column(items, SIZE), _column(items, MTIME))]
    loader = torch.utils.data.DataLoader(
        ClipBatches(files, batches, targets, segment.crop, opts.resampler,
                    front if in_workers else None),
        batch_size=None, shuffle=False, num_workers=workers,
        prefetch_factor=4 if workers > 0 else None, pin_memory=device.type == "cuda")
    views = opts.view_spec
    arrays = {name: spec.row_shape for name, spec in
              _embedding_arrays(views, teacher.embedding_dim, t_frames, opts.dtype).items()}
    cut = _ViewCutter(views, segment, lm, items.ids, teacher.sample_rate) if views.on else None
    writer = Writer(emb, feat, arrays, (lm.n_mels, lm.n_frames(targets[1].samples)), opts.dtype,
                    n, lambda i: f"item {items.ids[i]!r} ({items.paths[i]})", opts.on_error,
                    items.durations, teacher.name, key)
    t0 = time.perf_counter()
    total = sum(u.stop - u.start for u in todo)
    with progress_bar(total=total, desc=f"extract {key}", unit="clip",
                      progress=opts.progress) as bar:
        fwd, first = _stream(loader, batches, front, teacher, device, writer, opts.frames, bar,
                             total, cut)
    t = writer.tally
    return ExtractSummary(
        store=store_path, key=key, teacher=teacher.name, items=n, written=t.written,
        skipped_now=t.skipped, already_done=already, seconds=time.perf_counter() - t0,
        audio_seconds=t.audio_seconds, forward_seconds=fwd, skipped=emb.skipped(),
        first_batch_seconds=first,
    )


def _column(items: ItemsTable, name: str) -> np.ndarray:
    return np.asarray(items.extra.get(name, np.full(len(items), -1)), dtype=np.int64)


def _stream(loader: Any, batches: list[Batch], front: FrontEnd, teacher: Teacher,
            device: torch.device, writer: Writer, frames: bool, bar: Any,
            total: int, cut: "_ViewCutter | None" = None) -> tuple[float, float]:
    """Run every batch through the teacher and hand it to the writer; returns the host time
    spent in the teacher's forward and the wait for the first batch. An interrupt keeps every
    unit already complete."""
    fwd, first = 0.0, 0.0
    if not batches:  # a finished store: start no workers
        return fwd, first
    t0 = time.perf_counter()
    it = iter(loader)  # workers fork before the writer thread starts
    writer.start()
    try:
        for data in it:
            tf = time.perf_counter()
            first = first or tf - t0
            result = _forward(data, batches[data["batch"]], front, teacher, device, frames, cut)
            fwd += time.perf_counter() - tf
            writer.put(result)
            bar.update(result.batch.stop - result.batch.start)
    except KeyboardInterrupt:
        writer.abandon()
        t = writer.tally
        raise RunInterrupted(f"interrupted: {t.written + t.skipped} of {total} clips of this "
                             f"run were written and kept ({t.units} units); rerun the same "
                             "command to continue") from None
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    return fwd, first


class _ViewCutter:
    """Cuts a batch's segment waves into its items' K views (parameters drawn per item)."""

    def __init__(self, views: ViewSpec, segment: Segment, lm: LogMelParams, ids: list[str],
                 sample_rate: int) -> None:
        self.views, self.segment, self.lm, self.ids = views, segment, lm, ids
        self.sample_rate = sample_rate
        self.length = views.view_segment(segment).samples(sample_rate)

    def params(self, batch: Batch) -> np.ndarray:
        """(rows, K, 3) parameters of the batch's items' views."""
        return view_params(self.ids[batch.start:batch.stop], self.views, self.segment, self.lm)

    def __call__(self, wave: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        return crop_views(wave, params, self.sample_rate, self.length)


def _run_teacher(teacher: Teacher, wave: torch.Tensor, device: torch.device,
                 frames: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward; clip (and frame) embeddings, still on the device."""
    cuda = device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", enabled=teacher.autocast_on(device)):
        out = teacher(wave.to(device, non_blocking=cuda))
    return out.clip, (out.frames if frames else None)


def _forward(data: dict[str, Any], batch: Batch, front: FrontEnd, teacher: Teacher,
             device: torch.device, frames: bool, cut: _ViewCutter | None = None) -> BatchResult:
    """The teacher on a decoded batch: once on its segments, or once per view (a batch of the
    same size each time) stacked along a view axis."""
    if "teacher" not in data:
        data.update(front(data, batch.unit.features))
    errors = list(data["errors"])
    ok_rows = [j for j, e in enumerate(errors) if not e]
    clip = frame_emb = params = None
    cuda = device.type == "cuda"
    if cut is not None:
        params = cut.params(batch)
    if ok_rows:
        wave = data["teacher"] if len(ok_rows) == len(errors) else \
            data["teacher"].index_select(0, to_device(ok_rows, data["teacher"].device))
        if cut is None:
            clip, frame_emb = _run_teacher(teacher, wave, device, frames)
        else:
            views = cut(wave, params[ok_rows])
            outs = [_run_teacher(teacher, views[:, v], device, frames)
                    for v in range(views.shape[1])]
            clip = torch.stack([c for c, _ in outs], dim=1)
            frame_emb = torch.stack([f for _, f in outs], dim=1) if frames else None
        clip = clip.to("cpu", non_blocking=cuda)
        if frame_emb is not None:
            frame_emb = frame_emb.to("cpu", non_blocking=cuda)
    logmel = data.get("logmel")
    if logmel is not None:
        logmel = logmel.to("cpu", non_blocking=cuda)
    ready = None
    if cuda:
        ready = torch.cuda.Event()
        ready.record()
    return BatchResult(batch, errors, ok_rows, clip, frame_emb, logmel, ready, params)
