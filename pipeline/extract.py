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
from eastkd.store import (OK, PENDING, SKIPPED, ArraySpec, EastkdError, Store, backend_name,
                          create_store, eastkd_version, open_for_dataset)
from eastkd.store.store import store_exists

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


class _UnitDecoder(torch.utils.data.Dataset):
    """Decodes one block of items per index (runs in DataLoader workers: no store handles)."""

    def __init__(self, paths: list[str], sha: list[str], units: list[tuple[int, int]],
                 teacher_sr: int, segment: Segment, logmel: LogMelParams | None,
                 feature_units: set[int]) -> None:
        self.paths, self.sha, self.units = paths, sha, units
        self.teacher_sr, self.segment = teacher_sr, segment
        self.logmel_params = logmel
        self.feature_units = feature_units
        self._logmel: LogMel | None = None

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, u: int) -> dict[str, Any]:
        start, stop = self.units[u]
        k = stop - start
        n_t = self.segment.samples(self.teacher_sr)
        wave_t = torch.zeros(k, n_t)
        want_feats = u in self.feature_units and self.logmel_params is not None
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
        return {"u": u, "start": start, "wave": wave_t, "logmel": feats, "errors": errors}


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
    if store_exists(store_path):
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
    shard_i, shard_n = opts.shard
    if shard_n > 1 and backend_name(store_path) != "zarr":
        raise EastkdError("--shard needs a Zarr store (HDF5 has no safe concurrent writers)")
    spec = resolve_dataset(dataset) if isinstance(dataset, str) else dataset
    teacher = load_teacher(opts.teacher, opts.teacher_options)
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
            raise EastkdError(f"teacher {teacher.name!r} has no frame-level embeddings; drop --frames")
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
               "n_frames": t_frames, "pooling": teacher.pooling,
               "segment": segment.as_dict(), "eastkd_version": eastkd_version(),
               "dataset_fingerprint": store.dataset_fingerprint,
               "extract_options": {"batch_size": opts.batch_size, "dtype": opts.dtype,
                                   "frames": opts.frames, "crop": opts.crop,
                                   "segment": segment.seconds, "on_error": opts.on_error}},
        identity=identity, overwrite=opts.overwrite, max_chunk_items=opts.chunk_items,
    )

    unit = max(feat.unit, emb.unit)
    block = _block_items([feat, emb], unit, opts.batch_size)
    emb_status, feat_status = emb.status(), feat.status()
    todo, feature_units = [], set()
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
            if (feat_status[s:e] == PENDING).any():
                feature_units.add(len(todo))
            todo.append((s, e))

    decoder = _UnitDecoder(items.paths, items.sha256, todo, teacher.sample_rate, segment,
                           lm, feature_units)
    loader = torch.utils.data.DataLoader(
        decoder, batch_size=None, shuffle=False, num_workers=max(0, opts.workers),
        prefetch_factor=2 if opts.workers > 0 else None,
        persistent_workers=False,
    )
    t0 = time.perf_counter()
    fwd = 0.0
    written = skipped_now = 0
    audio_s = 0.0
    total = sum(e - s for s, e in todo)
    bar = tqdm(total=total, desc=f"extract {key}", unit="clip", disable=not opts.progress)
    autocast = device.type == "cuda"
    try:
        for batch in loader:
            start, errors = batch["start"], list(batch["errors"])
            decode_errors = list(errors)  # features fail only on these, not on the teacher's
            wave = batch["wave"]
            k = wave.shape[0]
            ok_rows = [j for j in range(k) if not errors[j]]
            clip = np.zeros((k, teacher.embedding_dim), dtype=opts.dtype)
            frames = np.zeros((k, t_frames, teacher.embedding_dim), dtype=opts.dtype) \
                if opts.frames else None
            tf = time.perf_counter()
            for b in range(0, len(ok_rows), opts.batch_size):
                rows = ok_rows[b:b + opts.batch_size]
                x = wave[rows].to(device, non_blocking=True)
                with torch.inference_mode(), torch.autocast("cuda", enabled=autocast):
                    out = teacher(x)
                c = out.clip.float()
                bad = ~torch.isfinite(c).all(dim=1)
                if out.frames is not None and opts.frames:
                    bad |= ~torch.isfinite(out.frames.float()).flatten(1).all(dim=1)
                for r, is_bad in zip(rows, bad.tolist()):
                    if is_bad:
                        errors[r] = f"teacher {teacher.name} produced NaN/inf"
                good = [j for j, r in enumerate(rows) if not errors[r]]
                idx = [rows[j] for j in good]
                clip[idx] = _cast(c[good], opts.dtype, f"{key} embeddings")
                if frames is not None:
                    frames[idx] = _cast(out.frames[good], opts.dtype, f"{key} frame embeddings")
            fwd += time.perf_counter() - tf
            failed = [j for j in range(k) if errors[j]]
            if failed and opts.on_error == "fail":
                j = failed[0]
                raise EastkdError(
                    f"item {items.ids[start + j]!r} ({items.paths[start + j]}): {errors[j]}; "
                    "fix or remove it, or rerun with --on-error skip (finished work is kept)"
                )
            status = np.where([bool(e) for e in errors], SKIPPED, OK).astype(np.uint8)
            if batch["logmel"] is not None:
                f_status = np.where([bool(e) for e in decode_errors], SKIPPED, OK).astype(np.uint8)
                feats = _cast(batch["logmel"], opts.dtype, "log-mel features")
                feats[f_status == SKIPPED] = 0
                feat.write_block(start, {"values": feats}, f_status, decode_errors)
            data = {"clip": clip}
            if frames is not None:
                data["frames"] = frames
            emb.write_block(start, data, status, errors)
            written += k - len(failed)
            skipped_now += len(failed)
            audio_s += float(np.nansum(items.durations[start:start + k][status == OK]))
            bar.update(k)
            el = time.perf_counter() - t0
            bar.set_postfix({"clips/s": f"{written / el:.1f}", "audio s/s": f"{audio_s / el:.1f}"},
                            refresh=False)
    finally:
        bar.close()
    summary = ExtractSummary(
        store=store_path, key=key, teacher=teacher.name, items=n, written=written,
        skipped_now=skipped_now, already_done=already, seconds=time.perf_counter() - t0,
        audio_seconds=audio_s, forward_seconds=fwd, skipped=emb.skipped(),
    )
    return summary
