"""The extract stage: run the teacher once over a dataset and cache everything later stages need.

Work is split into *units* of whole chunks (the largest chunk along items of the arrays being
written); ``--shard I/N`` gives unit ``u`` to process ``u % N == I``, so N writers never share a
chunk. Each unit is decoded, run and written in *blocks* (the smallest chunk along items of the
data arrays, at least one batch), which bounds memory (a unit of small-row arrays may span
thousands of clips) and how much a killed run loses. A block's arrays are written first and its
status last, so a run killed at any moment (even SIGKILL) is continued by the same command with
nothing finished recomputed, and the final arrays equal those of an uninterrupted run bit for
bit.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from eastkd.pipeline.audio import AudioError, Segment, decode, fit_segment, read_bytes, resample
from eastkd.pipeline.datasets.base import DatasetSpec
from eastkd.pipeline.datasets.manifest import resolve_dataset
from eastkd.pipeline.device import resolve_device
from eastkd.pipeline.features import LogMel, LogMelParams
from eastkd.pipeline.indexing import build_items_table
from eastkd.pipeline.teachers.base import Teacher
from eastkd.pipeline.teachers.loading import load_teacher
from eastkd.store import (
    OK,
    PENDING,
    SKIPPED,
    ArraySpec,
    EastkdError,
    Store,
    backend_name,
    create_store,
    eastkd_version,
    open_for_dataset,
)

ON_ERROR = ("fail", "skip")
FEATURES = "logmel"


@dataclass
class ExtractOptions:
    """Everything that decides what extract writes (recorded as provenance)."""

    teacher: str = "crepe-tiny"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    segment: float | None = None
    crop: str = "start"
    dtype: str = "float16"
    frames: bool = False
    logmel: LogMelParams = field(default_factory=LogMelParams)
    batch_size: int = 16
    workers: int = 1
    device: str = "auto"
    on_error: str = "fail"
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    progress: bool = True
    chunk_items: int | None = None  # cap on items per chunk (power of two) of new sections


@dataclass
class ExtractSummary:
    store: str
    key: str
    teacher: str
    items: int
    written: int
    skipped_now: int
    already_done: int
    seconds: float
    audio_seconds: float
    forward_seconds: float
    skipped: list[tuple[str, str]]

    @property
    def clips_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EastkdError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise EastkdError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


class _PieceDecoder(torch.utils.data.Dataset):
    """Decodes one piece (one teacher batch) of a block per index, so that decoding overlaps the
    teacher from the first batch on. Runs in DataLoader workers: holds no store handles."""

    def __init__(self, paths: list[str], sha: list[str], pieces: list[tuple[int, int, bool]],
                 teacher_sr: int, segment: Segment, logmel: LogMelParams | None) -> None:
        self.paths, self.sha, self.pieces = paths, sha, pieces
        self.teacher_sr, self.segment = teacher_sr, segment
        self.logmel_params = logmel
        self._logmel: LogMel | None = None

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, p: int) -> dict[str, Any]:
        start, stop, want_feats = self.pieces[p]
        k = stop - start
        n_t = self.segment.samples(self.teacher_sr)
        wave_t = torch.zeros(k, n_t)
        want_feats = want_feats and self.logmel_params is not None
        n_s = self.segment.samples(self.logmel_params.sample_rate) if self.logmel_params else 0
        wave_s = torch.zeros(k, n_s) if want_feats else None
        errors = [""] * k
        for j in range(k):
            i = start + j
            try:
                data, digest = read_bytes(self.paths[i])
                if digest != self.sha[i]:
                    raise AudioError("file changed since the store was created (sha256 differs); "
                                     "re-extract into a new store")
                mono, sr = decode(data)
                wave_t[j] = fit_segment(resample(mono, sr, self.teacher_sr), n_t,
                                        self.segment.crop)
                if wave_s is not None:
                    wave_s[j] = fit_segment(resample(mono, sr, self.logmel_params.sample_rate),
                                            n_s, self.segment.crop)
            except AudioError as e:
                errors[j] = str(e)
        feats = None
        if wave_s is not None:
            if self._logmel is None:
                self._logmel = LogMel(self.logmel_params)
            with torch.inference_mode():
                feats = self._logmel(wave_s)
        return {"start": start, "wave": wave_t, "logmel": feats, "errors": errors}


class _BlockBuffer:
    """One block's outputs, filled piece by piece and written once complete."""

    def __init__(self, start: int, stop: int, dim: int, t_frames: int,
                 feat_shape: tuple[int, ...] | None, dtype: str) -> None:
        k = stop - start
        self.start, self.stop = start, stop
        self.clip = np.zeros((k, dim), dtype=dtype)
        self.frames = np.zeros((k, t_frames, dim), dtype=dtype) if t_frames else None
        self.feats = np.zeros((k, *feat_shape), dtype=dtype) if feat_shape else None
        self.errors = [""] * k  # decoding or teacher failures (embeddings status)
        self.decode_errors = [""] * k  # decoding failures only (features status)


def _identity(teacher: Teacher, opts: ExtractOptions, segment: Segment) -> dict[str, Any]:
    return {
        "teacher": teacher.name,
        "weights_sha256": teacher.weights_sha256,
        "teacher_options": {k: teacher.options[k] for k in sorted(teacher.options)},
        "sample_rate": teacher.sample_rate,
        "segment": segment.as_dict(),
        "dtype": opts.dtype,
        "frames": bool(opts.frames),
    }


def _resolve_segment(opts: ExtractOptions, durations: np.ndarray) -> Segment:
    if opts.segment is not None:
        if opts.segment <= 0:
            raise EastkdError("--segment must be positive (seconds)")
        return Segment(float(opts.segment), opts.crop)
    finite = durations[np.isfinite(durations)]
    if finite.size == 0:
        raise EastkdError("no readable audio in the dataset; check the paths in the manifest")
    return Segment(math.ceil(float(finite.max()) * 100) / 100, opts.crop)


def open_or_create(store_path: str, spec: DatasetSpec, progress: bool = True) -> Store:
    """The store for this dataset: created with its items table, or reopened after a check."""
    items = build_items_table(spec, progress=progress)
    dataset = {"name": spec.name, "source": spec.source, "description": spec.description}
    if os.path.exists(store_path):
        return open_for_dataset(store_path, items)
    return create_store(store_path, items, dataset)


def _block_items(sections: list[Any], unit: int, batch_size: int) -> int:
    """Rows per write block: the smallest data chunk along items, at least one batch, at most
    ``unit``. Chunk sizes are powers of two, so blocks never straddle a unit."""
    smallest = min(s.backend.chunks(f"{s.path}/{a}")[0] for s in sections for a in s.array_names())
    return max(1, min(unit, max(smallest, 1 << max(0, batch_size - 1).bit_length())))


def _cast(x: torch.Tensor, dtype: str, what: str) -> np.ndarray:
    arr = x.detach().float().cpu().numpy().astype(dtype)
    if not np.isfinite(arr).all():
        raise EastkdError(f"{what} overflows {dtype}; extract again with --dtype float32")
    return arr


def extract(dataset: str | DatasetSpec, store_path: str, opts: ExtractOptions) -> ExtractSummary:
    """Run ``opts.teacher`` over ``dataset`` and write embeddings and log-mel into the store."""
    if opts.on_error not in ON_ERROR:
        raise EastkdError(f"--on-error must be one of {ON_ERROR}")
    if opts.dtype not in ("float16", "float32"):
        raise EastkdError("--dtype must be float16 or float32")
    ck = opts.chunk_items
    if ck is not None and (ck < 1 or ck & (ck - 1)):
        raise EastkdError(f"--chunk-items {ck}: must be a power of two (1, 2, 4, ...)")
    shard_n = opts.shard[1]
    if shard_n > 1 and backend_name(store_path) != "zarr":
        raise EastkdError("--shard needs a Zarr store (HDF5 has no safe concurrent writers)")
    spec = resolve_dataset(dataset) if isinstance(dataset, str) else dataset
    teacher = load_teacher(opts.teacher, opts.teacher_options)
    teacher.set_frames(opts.frames)
    device = resolve_device(opts.device)
    teacher.to(device)
    teacher.model.eval()

    store = open_or_create(store_path, spec, opts.progress)
    try:
        return _extract_into(store, store_path, teacher, device, opts)
    finally:
        store.close()


def _extract_into(store: Store, store_path: str, teacher: Teacher, device: torch.device,
                  opts: ExtractOptions) -> ExtractSummary:
    shard_i, shard_n = opts.shard
    key = opts.key or teacher.name
    items = store.items
    n = len(items)
    segment = _resolve_segment(opts, items.durations)

    lm = opts.logmel
    n_frames = lm.n_frames(segment.samples(lm.sample_rate))
    feat = store.require_section(
        "features", FEATURES, {"values": ArraySpec((lm.n_mels, n_frames), opts.dtype)},
        attrs={"kind": "log-mel", "params": lm.as_dict(), "segment": segment.as_dict(),
               "layout": "items x mels x frames", "eastkd_version": eastkd_version()},
        identity={"params": lm.as_dict(), "segment": segment.as_dict(), "dtype": opts.dtype},
        overwrite=opts.overwrite, max_chunk_items=opts.chunk_items,
    )
    arrays = {"clip": ArraySpec((teacher.embedding_dim,), opts.dtype)}
    t_frames = 0
    if opts.frames:
        if teacher.frame_rate is None:
            raise EastkdError(
                f"teacher {teacher.name!r} has no frame-level embeddings; drop --frames")
        with torch.inference_mode():
            probe = teacher(torch.zeros(1, segment.samples(teacher.sample_rate), device=device))
        t_frames = int(probe.frames.shape[1])
        arrays["frames"] = ArraySpec((t_frames, teacher.embedding_dim), opts.dtype)
    identity = _identity(teacher, opts, segment)
    emb = store.require_section(
        "embeddings", key, arrays,
        attrs={"teacher": teacher.name, "weights_sha256": teacher.weights_sha256,
               "teacher_parameters": teacher.num_parameters, "sample_rate": teacher.sample_rate,
               "embedding_dim": teacher.embedding_dim, "frame_rate": teacher.frame_rate,
               "frame_offset": teacher.frame_offset,
               "n_frames": t_frames, "pooling": teacher.pooling,
               "segment": segment.as_dict(), "eastkd_version": eastkd_version(),
               "dataset_fingerprint": store.dataset_fingerprint,
               "extract_options": {"batch_size": opts.batch_size, "dtype": opts.dtype,
                                   "frames": opts.frames, "crop": opts.crop,
                                   "segment": segment.seconds, "on_error": opts.on_error,
                                   "device": device.type,
                                   "autocast_float16": teacher.autocast_on(device)}},
        identity=identity, overwrite=opts.overwrite, max_chunk_items=opts.chunk_items,
    )

    unit = max(feat.unit, emb.unit)
    block = _block_items([feat, emb], unit, opts.batch_size)
    emb_status, feat_status = emb.status(), feat.status()
    todo: list[tuple[int, int, bool]] = []  # blocks to do: (start, stop, with features)
    already = 0
    for u, u_start in enumerate(range(0, n, unit)):
        if u % shard_n != shard_i:
            continue
        u_stop = min(n, u_start + unit)
        for s in range(u_start, u_stop, block):
            e = min(u_stop, s + block)
            if (emb_status[s:e] != PENDING).all() and (feat_status[s:e] != PENDING).all():
                already += e - s
                continue
            todo.append((s, e, bool((feat_status[s:e] == PENDING).any())))
    pieces = [(p, min(e, p + opts.batch_size), f) for s, e, f in todo
              for p in range(s, e, opts.batch_size)]

    decoder = _PieceDecoder(items.paths, items.sha256, pieces, teacher.sample_rate, segment, lm)
    loader = torch.utils.data.DataLoader(
        decoder, batch_size=None, shuffle=False, num_workers=max(0, opts.workers),
        prefetch_factor=4 if opts.workers > 0 else None,
        persistent_workers=False,
    )
    t0 = time.perf_counter()
    fwd = 0.0
    written = skipped_now = 0
    audio_s = 0.0
    total = sum(e - s for s, e, _ in todo)
    bar = tqdm(total=total, desc=f"extract {key}", unit="clip", disable=not opts.progress)
    autocast = teacher.autocast_on(device)
    try:
        blocks = iter(todo)
        buf: _BlockBuffer | None = None
        for piece in loader:
            if buf is None:
                b_start, b_stop, with_feats = next(blocks)
                buf = _BlockBuffer(b_start, b_stop, teacher.embedding_dim, t_frames,
                                   (lm.n_mels, n_frames) if with_feats else None, opts.dtype)
            start, errors = piece["start"], list(piece["errors"])
            k, o = len(errors), piece["start"] - buf.start
            buf.decode_errors[o:o + k] = errors
            if piece["logmel"] is not None:
                buf.feats[o:o + k] = _cast(piece["logmel"], opts.dtype, "log-mel features")
            ok_rows = [j for j in range(k) if not errors[j]]
            tf = time.perf_counter()
            if ok_rows:
                wave = piece["wave"] if len(ok_rows) == k else piece["wave"][ok_rows]
                with torch.inference_mode(), torch.autocast("cuda", enabled=autocast):
                    out = teacher(wave.to(device, non_blocking=True))
                c = out.clip.float()
                bad = ~torch.isfinite(c).all(dim=1)
                if out.frames is not None and opts.frames:
                    bad |= ~torch.isfinite(out.frames.float()).flatten(1).all(dim=1)
                for r, is_bad in zip(ok_rows, bad.tolist()):
                    if is_bad:
                        errors[r] = f"teacher {teacher.name} produced NaN/inf"
                good = [j for j, r in enumerate(ok_rows) if not errors[r]]
                idx = [o + ok_rows[j] for j in good]
                buf.clip[idx] = _cast(c[good], opts.dtype, f"{key} embeddings")
                if buf.frames is not None:
                    buf.frames[idx] = _cast(out.frames[good], opts.dtype,
                                            f"{key} frame embeddings")
            fwd += time.perf_counter() - tf
            buf.errors[o:o + k] = errors
            failed = [j for j in range(k) if errors[j]]
            if failed and opts.on_error == "fail":
                j = start + failed[0]
                raise EastkdError(
                    f"item {items.ids[j]!r} ({items.paths[j]}): {errors[failed[0]]}; "
                    "fix or remove it, or rerun with --on-error skip (finished work is kept)"
                )
            bar.update(k)
            if start + k < buf.stop:
                continue
            # the block is complete: data first, status last (in Section.write_block)
            status = np.where([bool(e) for e in buf.errors], SKIPPED, OK).astype(np.uint8)
            if buf.feats is not None:
                f_status = np.where([bool(e) for e in buf.decode_errors], SKIPPED, OK)
                buf.feats[f_status == SKIPPED] = 0
                feat.write_block(buf.start, {"values": buf.feats}, f_status.astype(np.uint8),
                                 buf.decode_errors)
            data = {"clip": buf.clip}
            if buf.frames is not None:
                data["frames"] = buf.frames
            emb.write_block(buf.start, data, status, buf.errors)
            n_bad = int((status == SKIPPED).sum())
            written += len(status) - n_bad
            skipped_now += n_bad
            audio_s += float(np.nansum(items.durations[buf.start:buf.stop][status == OK]))
            el = time.perf_counter() - t0
            bar.set_postfix({"clips/s": f"{written / el:.1f}", "audio s/s": f"{audio_s / el:.1f}"},
                            refresh=False)
            buf = None
    finally:
        bar.close()
    summary = ExtractSummary(
        store=store_path, key=key, teacher=teacher.name, items=n, written=written,
        skipped_now=skipped_now, already_done=already, seconds=time.perf_counter() - t0,
        audio_seconds=audio_s, forward_seconds=fwd, skipped=emb.skipped(),
    )
    return summary
