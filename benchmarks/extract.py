"""Benchmark ``eastkd extract`` against its two lower bounds, measured in the same run.

Renders the demo dataset (``--clips`` clips of ``--clip-seconds`` s at 44.1 kHz, WAV or MP3) into
a temporary folder, then times on the same clips, batches, device and workers:

* (a) ``teacher_s``: the teacher's bare forward passes over pre-decoded waveforms;
* (b) ``inputs_s``: the bare input pipeline (decode in the workers, resample to the teacher's and
  the student's rates, log-mel; no teacher, no writes) with the same workers;
* (c) ``extract_s``: the real :func:`eastkd.pipeline.extract.extract` into a fresh store.

and prints ``ratio = extract_s / max(teacher_s, inputs_s)`` (target <= 1.15). Then:

* overlap: extract with a synthetic teacher that sleeps ``--sleep-ms`` per batch (default: twice
  the inputs' time per batch), in small batches; the loop's wall time against
  ``max(teacher, inputs, writes)`` (``overlap_ratio``, target <= 1.15; the sum of the three is
  printed beside it), the teacher timed alone on the same waves as in (a) (its sleeps plus
  its small matmul). The stages must share the CPUs: on a machine where the inputs and the
  writes together need more CPU than is free, no pipeline overlaps them;
* resume: extract again into the finished store: ``resume_fraction`` of (c) (target < 0.05)
  and ``resume_audio_reads`` (files hashed or decoded; target 0).

Prints one JSON object. Usage:
``python benchmarks/extract.py --teacher crepe-tiny --format mp3 --device cpu --workers 1``.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import soundfile as sf
import torch
from emit import emit

import eastkd.pipeline.extract.indexing as indexing
import eastkd.pipeline.extract.inputs as inputs
from eastkd.pipeline.core.audio import Segment
from eastkd.pipeline.core.device import resolve_device
from eastkd.pipeline.core.features import LogMelParams
from eastkd.pipeline.demo.data import render_demo_dataset
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.pipeline.extract.inputs import ClipBatches, FileRef, FrontEnd, Target
from eastkd.pipeline.extract.plan import Unit, plan_batches
from eastkd.pipeline.teachers.loading import load_teacher
from eastkd.store import Section

TEACHERS = ("crepe", "crepe-tiny", "passt")
SAMPLE_RATE = 44100


class SleepyTeacher(torch.nn.Module):
    """A synthetic teacher whose forward costs a fixed wall time per batch (and no CPU)."""

    sample_rate = 16000

    def __init__(self, sleep_ms: float) -> None:
        super().__init__()
        self.sleep_s = float(sleep_ms) / 1000
        self.proj = torch.nn.Parameter(torch.randn(64, 8, generator=torch.Generator()
                                                   .manual_seed(0)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        time.sleep(self.sleep_s)
        return wave[:, : wave.shape[1] // 64 * 64].reshape(len(wave), -1, 64) @ self.proj


def sleepy(sleep_ms: float = 50.0) -> SleepyTeacher:
    return SleepyTeacher(sleep_ms)


def teacher_options(name: str, tmp: Path) -> dict[str, Any]:
    """The teacher's options: PaSST gets random weights (none ship offline; timings do not
    depend on their values), saved as a checkpoint file that it loads as a real one."""
    if name != "passt":
        return {}
    torch.manual_seed(0)
    path = tmp / "passt-random.pt"
    torch.save(load_teacher("passt", {"random_init": True}).model.passt.net.state_dict(), path)
    return {"weights": str(path)}


# -- data --------------------------------------------------------------------------------------


def make_dataset(tmp: Path, clips: int, seconds: float, fmt: str) -> Path:
    """Demo clips at 44.1 kHz as WAV or MP3, listed in a manifest with absolute paths."""
    full = render_demo_dataset(tmp / "demo", clips_per_class=math.ceil(clips / 5),
                               seconds=seconds, sample_rate=SAMPLE_RATE, seed=0, progress=False)
    with full.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:clips]
    for r in rows:
        src = (full.parent / r["path"]).resolve()
        if fmt == "mp3":
            dst = src.with_suffix(".mp3")
            wav, sr = sf.read(src, dtype="float32")
            sf.write(dst, wav, sr, format="MP3")
            src = dst
        r["path"] = str(src)
    out = tmp / "bench.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return out


def _paths(manifest: Path) -> list[str]:
    with manifest.open(newline="") as fh:
        return [r["path"] for r in csv.DictReader(fh)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- (a) teacher, (b) inputs -------------------------------------------------------------------


def _input_loader(paths: list[str], segment: Segment, teacher_sr: int, batch: int,
                  workers: int, device: torch.device) -> tuple[Any, FrontEnd, list[Any]]:
    """The input half of extract, built from the same parts as extract builds it."""
    lm = LogMelParams()
    targets = [Target(teacher_sr, segment.samples(teacher_sr)),
               Target(lm.sample_rate, segment.samples(lm.sample_rate))]
    front = FrontEnd(targets, segment.crop, "kaiser-best", lm, device)
    batches = plan_batches([Unit(0, 0, len(paths), True)], batch)
    files = [FileRef(p, "", *indexing.file_stat(p)) for p in paths]
    in_workers = device.type == "cpu" and workers > 0
    ds = ClipBatches(files, batches, targets, segment.crop, "kaiser-best",
                     front if in_workers else None)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         pin_memory=device.type == "cuda")
    return loader, front, batches


def time_inputs(paths: list[str], segment: Segment, teacher_sr: int, batch: int, workers: int,
                device: torch.device) -> tuple[float, list[torch.Tensor]]:
    """(b): decode + resample + log-mel of every clip; also returns the teacher waves."""
    loader, front, batches = _input_loader(paths, segment, teacher_sr, batch, workers, device)
    waves = []
    t0 = time.perf_counter()
    for data in loader:
        if "teacher" not in data:
            data.update(front(data, True))
        waves.append(data["teacher"])
    _sync(device)
    return time.perf_counter() - t0, waves


def time_teacher(name: str, options: dict, waves: list[torch.Tensor], device: torch.device,
                 autocast: bool) -> float:
    """(a): the teacher's forward on pre-decoded waves (on the device before timing)."""
    teacher = load_teacher(name, options).to(device)
    teacher.model.eval()
    waves = [w.to(device) for w in waves]
    with torch.inference_mode(), torch.autocast("cuda", enabled=autocast):
        teacher(waves[0])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for w in waves:
            teacher(w).clip.float().cpu()
        _sync(device)
        return time.perf_counter() - t0


# -- (c) extract, overlap, resume --------------------------------------------------------------


def time_extract(manifest: Path, store: Path, opts: ExtractOptions) -> tuple[float, float, float]:
    """Wall time of the whole call (loading the teacher, indexing, ...), of its loop over the
    batches (decode, resample, log-mel, forward, writes), and the loop's wait for its first
    batch (worker start-up and the first decode: filling the pipeline)."""
    t0 = time.perf_counter()
    summary = extract(str(manifest), str(store), opts)
    assert summary.written + summary.already_done == summary.items, summary
    return time.perf_counter() - t0, summary.seconds, summary.first_batch_seconds


def _counting(counter: dict[str, float], key: str, fn: Callable) -> Callable:
    def wrapped(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            counter[key] += time.perf_counter() - t0
            counter[key + "_calls"] += 1
    return wrapped


def time_resume(manifest: Path, store: Path, opts: ExtractOptions) -> tuple[float, int]:
    """Extract into a finished store, counting audio files hashed or decoded."""
    count = {"read": 0.0, "read_calls": 0}
    saved = (indexing.file_sha256, inputs.decode_window)
    indexing.file_sha256 = _counting(count, "read", indexing.file_sha256)
    inputs.decode_window = _counting(count, "read", inputs.decode_window)
    try:
        return time_extract(manifest, store, opts)[0], int(count["read_calls"])
    finally:
        indexing.file_sha256, inputs.decode_window = saved


def time_overlap(manifest: Path, tmp: Path, base: ExtractOptions, batch: int,
                 sleep_ms: float | None, device: torch.device) -> dict[str, float]:
    """Extract with the sleeping teacher in batches of ``batch`` clips (many batches: filling
    and draining the pipeline costs one batch each); the store writes are timed inside the same
    run, the inputs alone just before at the same batch size. The loop is compared (loading the
    synthetic teacher sleeps once more, in its probe)."""
    paths = _paths(manifest)
    inputs_s, waves = time_inputs(paths, Segment(base.segment, "start"), SleepyTeacher.sample_rate,
                                  batch, base.resolved_workers(), device)
    if sleep_ms is None:  # the teacher is the slowest stage, but not by much
        sleep_ms = 2000 * inputs_s / len(waves)
    count = {"write": 0.0, "write_calls": 0}
    saved = (Section.write_rows, Section.write_block)
    Section.write_rows = _counting(count, "write", Section.write_rows)
    Section.write_block = _counting(count, "write", Section.write_block)
    opts = ExtractOptions(**{**base.__dict__, "teacher": "python:__main__:sleepy",
                             "teacher_options": {"sleep_ms": sleep_ms}, "key": "sleepy",
                             "batch_size": batch})
    # the teacher's stage alone, as (a): its sleeps plus its small matmul and mean
    teacher_s = time_teacher(opts.teacher, opts.teacher_options, waves, device, False)
    try:
        _, wall, fill = time_extract(manifest, tmp / "sleepy.zarr", opts)
    finally:
        Section.write_rows, Section.write_block = saved
    parts = {"teacher_s": teacher_s, "inputs_s": inputs_s, "writes_s": count["write"]}
    return {"batch_size": batch, "batches": len(waves), "sleep_ms_per_batch": round(sleep_ms, 2),
            "sleep_s": round(len(waves) * sleep_ms / 1000, 3),
            **{k: round(v, 3) for k, v in parts.items()},
            "extract_loop_s": round(wall, 3), "sum_s": round(sum(parts.values()), 3),
            "overlap_ratio": round(wall / max(parts.values()), 3),
            # the same without filling the pipeline (a fixed cost, whatever the dataset's size)
            "first_batch_s": round(fill, 3),
            "steady_overlap_ratio": round((wall - fill) / max(parts.values()), 3)}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="crepe-tiny", choices=TEACHERS)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--format", default="wav", choices=["wav", "mp3"])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--clip-seconds", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sleep-ms", type=float, default=None,
                    help="synthetic teacher's cost per batch [default: twice (b) per batch: "
                         "the sum of the stages is then at least 1.5 times their max]")
    ap.add_argument("--overlap-batch-size", type=int, default=16,
                    help="batch size of the overlap check (many batches)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="(a), (b) and (c) are timed this often, alternating; fastest counts")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--machine", help="a description of the machine, recorded in the JSON")
    args = ap.parse_args()

    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="eastkd-bench-"))
    try:
        manifest = make_dataset(tmp, args.clips, args.clip_seconds, args.format)
        paths = _paths(manifest)
        options = teacher_options(args.teacher, tmp)
        teacher = load_teacher(args.teacher, options)
        autocast = device.type == "cuda" and bool(getattr(teacher, "autocast_safe", False))
        segment = Segment(args.clip_seconds, "start")
        opts = ExtractOptions(teacher=args.teacher, teacher_options=options,
                              segment=args.clip_seconds, batch_size=args.batch_size,
                              workers=args.workers, device=args.device, progress=False)
        runs: dict[str, list[float]] = {"a": [], "b": [], "c": [], "c_loop": []}
        for r in range(args.repeats):
            inputs_s, waves = time_inputs(paths, segment, teacher.sample_rate, args.batch_size,
                                          args.workers, device)
            runs["b"].append(inputs_s)
            runs["a"].append(time_teacher(args.teacher, options, waves, device, autocast))
            store = tmp / f"store{r}.zarr"
            call, loop, _ = time_extract(manifest, store, opts)
            runs["c"].append(call)
            runs["c_loop"].append(loop)
        teacher_s, inputs_s, extract_s = min(runs["a"]), min(runs["b"]), min(runs["c"])
        resume_s, reads = time_resume(manifest, store, opts)
        overlap = time_overlap(manifest, tmp, opts, args.overlap_batch_size, args.sleep_ms,
                               device)
        result = {
            "machine": args.machine,
            "teacher": args.teacher, "format": args.format, "device": args.device,
            "card": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "workers": args.workers, "clips": args.clips, "clip_seconds": args.clip_seconds,
            "sample_rate": SAMPLE_RATE, "batch_size": args.batch_size, "autocast": autocast,
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "teacher_s": round(teacher_s, 3), "inputs_s": round(inputs_s, 3),
            "extract_s": round(extract_s, 3),
            "extract_loop_s": round(min(runs["c_loop"]), 3),
            "ratio": round(extract_s / max(teacher_s, inputs_s), 3),
            "all_runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
            "extract_clips_per_s": round(args.clips / extract_s, 2),
            "teacher_clips_per_s": round(args.clips / teacher_s, 2),
            "inputs_clips_per_s": round(args.clips / inputs_s, 2),
            "resume_s": round(resume_s, 3),
            "resume_fraction": round(resume_s / extract_s, 4),
            "resume_audio_reads": reads,
            "overlap": overlap,
        }
        emit(result, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
