"""Benchmark ``eastkd extract``: the pipeline's wall time against the teacher alone.

Renders the demo dataset (``--clips`` clips of ``--seconds`` s) into a temporary folder, then
times, on the same clips in the same batches with the same torch thread count:

* ``forward_s``: the teacher's bare forward passes over pre-decoded waveforms (what any
  extraction must pay), and
* ``extract_s``: the real :func:`eastkd.pipeline.extract.extract` call into a fresh store
  (indexing + decoding + log-mel + forward + writes; ``workers=1``).

``overhead_ratio = extract_s / forward_s`` is the pipeline's cost on top of the teacher (aim:
<= 1.10). Each is timed ``--repeats`` times, alternating, and the fastest run is reported. On a
shared machine the two timings see different background load; ``extract_non_forward_s`` (the
part of the same extract run spent outside the teacher's forward) is the steadier number.
Prints one JSON object. Usage: ``python benchmarks/extract.py [--teacher crepe-tiny]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eastkd.pipeline.audio import Segment, decode, fit_segment, read_bytes, resample
from eastkd.pipeline.demo_data import render_demo_dataset
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.pipeline.teachers.loading import load_teacher


def _subset_manifest(manifest: Path, n: int, out: Path) -> Path:
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    for r in rows:
        r["path"] = str((manifest.parent / r["path"]).resolve())
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return out


def _decoded(manifest: Path, sr: int, segment: Segment) -> torch.Tensor:
    """Every clip decoded, resampled and cut as extract does it (not timed)."""
    with manifest.open(newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    n = segment.samples(sr)
    waves = []
    for p in paths:
        mono, file_sr = decode(read_bytes(p)[0])
        waves.append(fit_segment(resample(mono, file_sr, sr), n, segment.crop))
    return torch.stack(waves)


def _bare_forward(teacher_name: str, options: dict, waves: torch.Tensor, batch: int) -> float:
    teacher = load_teacher(teacher_name, options)
    teacher.model.eval()
    with torch.inference_mode():
        teacher(waves[:batch])  # warm-up (allocator, kernels): extract's first batch pays it too
        t0 = time.perf_counter()
        for s in range(0, len(waves), batch):
            out = teacher(waves[s:s + batch])
            out.clip.float().cpu()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="crepe", choices=["crepe", "crepe-tiny"])
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--store", default="zarr", choices=["zarr", "h5"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frames", action="store_true", help="also store frame embeddings")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="eastkd-bench-"))
    try:
        per_class = math.ceil(args.clips / 5)
        full = render_demo_dataset(tmp / "demo", clips_per_class=per_class, seconds=args.seconds,
                                   seed=0, progress=False)
        manifest = _subset_manifest(full, args.clips, tmp / "bench.csv")
        teacher = load_teacher(args.teacher)
        segment = Segment(args.seconds, "start")
        waves = _decoded(manifest, teacher.sample_rate, segment)
        del teacher

        fwd, ext, summaries = [], [], []
        for r in range(args.repeats):
            fwd.append(_bare_forward(args.teacher, {}, waves, args.batch_size))
            store = tmp / f"store{r}.{args.store}"
            opts = ExtractOptions(teacher=args.teacher, batch_size=args.batch_size, workers=1,
                                  device="cpu", dtype=args.dtype, frames=args.frames,
                                  progress=False)
            t0 = time.perf_counter()
            summary = extract(str(manifest), str(store), opts)
            ext.append(time.perf_counter() - t0)
            summaries.append(summary)
            assert summary.written == args.clips, summary
        i = int(np.argmin(ext))
        forward_s, extract_s = min(fwd), ext[i]
        s = summaries[i]
        result = {
            "teacher": args.teacher,
            "clips": args.clips,
            "clip_seconds": args.seconds,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "store": args.store,
            "frames": args.frames,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "repeats": args.repeats,
            "forward_s": round(forward_s, 3),
            "extract_s": round(extract_s, 3),
            "overhead_ratio": round(extract_s / forward_s, 3),
            "extract_loop_s": round(s.seconds, 3),
            "extract_forward_s": round(s.forward_seconds, 3),
            # time extract spends outside the teacher's forward in the same run: a measure of
            # the pipeline's own cost that the machine's other load does not distort much
            "extract_non_forward_s": round(extract_s - s.forward_seconds, 3),
            "extract_non_forward_fraction": round(1 - s.forward_seconds / extract_s, 4),
            "clips_per_s": round(args.clips / extract_s, 2),
            "audio_seconds_per_s": round(args.clips * args.seconds / extract_s, 2),
            "forward_clips_per_s": round(args.clips / forward_s, 2),
            "all_forward_s": [round(x, 3) for x in fwd],
            "all_extract_s": [round(x, 3) for x in ext],
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
