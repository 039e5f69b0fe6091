"""Benchmark: what consistent augmented views (``extract --views K``) cost.

In one run, on the bundled demo rendered to a temp folder (``--clips-per-class`` clips of
``--clip-seconds`` per family, crepe-tiny):

* **extract**: time and store size for K = 1 (no views: the whole segment), and K = 4 and 8
  views of ``--view-seconds``; per view (seconds per teacher input, bytes per item) and against
  K = 1;
* **distill epoch**: the same student, FitNet loss, batch size and items per epoch, trained on
  (a) views (one view per item per epoch, cut out of the whole-clip log-mel, from the K = 4
  store), (b) plain rows of a store extracted with ``--segment`` = the view length (the same
  input size: what slicing views is measured against), (c) plain rows of whole clips (K = 1);
  loaded in memory and streamed chunk by chunk (``memory_limit=0``). Median of ``--epochs``
  timed epochs after one warm-up; the modes take turns so machine noise hits them alike.
  Target: views ≤ 1.1 × plain at equal items per epoch and input size.

    python benchmarks/views.py [--clips-per-class 16] [--epochs 9] [--out F.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from distill import Trainer
from emit import emit

from eastkd.pipeline.core.reading import load_split, resolve_targets
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.store import open_store

TEACHER_OPTIONS = {"hop_ms": 100}
KEY = "crepe-tiny"


def extract_store(manifest: str, store: Path, **kw: Any) -> dict[str, Any]:
    """Extract ``store`` and return its wall time and size."""
    opts = ExtractOptions(teacher="crepe-tiny", teacher_options=dict(TEACHER_OPTIONS),
                          progress=False, workers=1, **kw)
    t0 = time.perf_counter()
    summary = extract(manifest, str(store), opts)
    seconds = time.perf_counter() - t0
    with open_store(str(store)) as s:
        size = s.nbytes_stored()
        n = len(s.items)
    return {"seconds": round(seconds, 3), "teacher_forward_s": round(summary.forward_seconds, 3),
            "bytes": int(size), "items": n}


def bench_extract(manifest: str, tmp: Path, ks: list[int], view_seconds: float,
                  segment: float) -> tuple[dict[str, Any], dict[int, Path]]:
    out: dict[str, Any] = {}
    stores: dict[int, Path] = {}
    for k in ks:
        store = tmp / f"k{k}.zarr"
        views = {} if k == 1 else dict(views=k, view_seconds=view_seconds, view_gain_db=6.0)
        r = extract_store(manifest, store, segment=segment, **views)
        inputs = r["items"] * k
        r.update(teacher_inputs=inputs, input_seconds=segment if k == 1 else view_seconds,
                 seconds_per_input=round(r["seconds"] / inputs, 5),
                 bytes_per_item=round(r["bytes"] / r["items"], 1))
        out[f"K={k}"] = r
        stores[k] = store
    base = out["K=1"]
    for k in ks:
        r = out[f"K={k}"]
        r["time_vs_k1"] = round(r["seconds"] / base["seconds"], 3)
        r["bytes_vs_k1"] = round(r["bytes"] / base["bytes"], 3)
    return out, stores


def bench_distill(stores: dict[str, Path], epochs: int, batch_size: int,
                  seed: int) -> dict[str, Any]:
    """Median epoch seconds of each (store, memory mode), taking turns."""
    splits, trainers, gens = {}, {}, {}
    opened = []
    for name, path in stores.items():
        store = open_store(str(path))
        opened.append(store)
        spec = resolve_targets(store, KEY)
        for mode, limit in (("loaded", 4 << 30), ("streamed", 0)):
            m = f"{name}_{mode}"
            splits[m] = load_split(store, "train", spec, memory_limit=limit, workers=0)
            trainers[m] = Trainer("vgg", splits[m].input_shape[0], len(store.items.class_names),
                                  spec.dim, seed)
            gens[m] = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {m: [] for m in splits}
    items = {}
    for epoch in range(epochs + 1):  # epoch 0 warms up
        for m, split in splits.items():
            split.set_epoch(seed, epoch)
            t0 = time.perf_counter()
            n = 0
            for b in split.batches(batch_size, gens[m], drop_last_below=2):
                trainers[m].step(b.x, b.y, b.t)
                n += len(b.y)
            if epoch:
                times[m].append(time.perf_counter() - t0)
            items[m] = n
    for split in splits.values():
        split.close()
    for store in opened:
        store.close()
    out = {m: {"epoch_s": round(statistics.median(t), 4), "epochs_s": [round(x, 4) for x in t],
               "items": items[m], "input_frames": splits[m].input_shape[1]}
           for m, t in times.items()}
    for mode in ("loaded", "streamed"):
        v, p = out[f"views_{mode}"]["epoch_s"], out[f"plain_same_length_{mode}"]["epoch_s"]
        out[f"views_vs_plain_same_length_{mode}"] = round(v / p, 3)
        out[f"views_vs_plain_whole_clip_{mode}"] = round(v / out[f"plain_whole_{mode}"]["epoch_s"],
                                                         3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=16)
    ap.add_argument("--clip-seconds", type=float, default=2.0)
    ap.add_argument("--view-seconds", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine", default="2-core CPU VM shared with other jobs")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from eastkd.pipeline.demo.data import render_demo_dataset

    with tempfile.TemporaryDirectory(prefix="eastkd-views-") as d:
        tmp = Path(d)
        manifest = str(render_demo_dataset(tmp / "data", clips_per_class=args.clips_per_class,
                                           seconds=args.clip_seconds, seed=0, progress=False))
        ext, stores = bench_extract(manifest, tmp, [1, 4, 8], args.view_seconds,
                                    args.clip_seconds)
        same = tmp / "plain-view-length.zarr"
        extract_store(manifest, same, segment=args.view_seconds)
        dist = bench_distill({"views": stores[4], "plain_same_length": same,
                              "plain_whole": stores[1]}, args.epochs, args.batch_size,
                             args.seed)
    result = {
        "benchmark": "views",
        "teacher": "crepe-tiny", "teacher_options": TEACHER_OPTIONS,
        "clips": 5 * args.clips_per_class, "clip_seconds": args.clip_seconds,
        "view_seconds": args.view_seconds, "view_gain_db": 6.0,
        "extract": ext, "distill_epoch": dist,
        "settings": {"batch_size": args.batch_size, "epochs_timed": args.epochs,
                     "student": "vgg", "kd": "fitnet", "extract_workers": 1, "threads": 1},
        "machine": {"description": args.machine, "cpus": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
