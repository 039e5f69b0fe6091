"""Benchmark: what one distillation epoch costs when its data comes from the store.

Three ways to run the same epoch (same student, FitNet loss, batch size, shuffling seed):

* ``store``: the distill loader (:mod:`eastkd.pipeline.core.reading`) reading inputs and targets
  from the store, timed with the loading included (``store_loaded``, the default in-memory mode)
  and streamed chunk by chunk during the epoch (``store_streamed``, ``--memory-limit 0``);
* ``in_memory``: all inputs and targets already float32 tensors in memory (the upper limit);
* ``teacher_online``: inputs from memory, but targets computed by running the teacher on the
  decoded audio each batch (read + decode + resample + teacher forward), i.e. no embedding cache.

Prints one JSON object with median epoch seconds over ``--epochs`` timed epochs (after one
warm-up epoch; the three loaders take turns) and ``store_vs_memory_speed`` = in-memory time /
store time (1.0 = no overhead). The online teacher is timed on ``--teacher-batches`` batches and
scaled to the epoch.

    python benchmarks/distill.py [STORE MANIFEST] [--teacher crepe|crepe-tiny] [--epochs 3]

Without STORE, the bundled demo is rendered to a temp folder and extracted with crepe-tiny.

Synthetic store mode (``--items N``): a class-sorted store of N items several times
``--memory-limit`` (:mod:`synthetic`), and in one run: epoch time streamed vs in
memory, epoch time vs the compute floor (the same student's forward + backward + AdamW on
resident, pre-cut batches for the same steps), bytes read per epoch / bytes needed, peak RSS of
a streamed epoch at N, 4N and 16N items (a fresh process each; the main process and each reader
process), and mean distinct classes per batch against a full shuffle (and against a 4-chunk
window, the old scheme)::

    python benchmarks/distill.py --items 8192 --memory-limit 4M --batch-size 32 \\
        [--device cuda] [--out benchmarks/results/distill-streaming.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from emit import emit
from synthetic import KEY, make_synthetic_store

from eastkd.pipeline.core import registry
from eastkd.pipeline.core.audio import Segment, decode, fit_segment, read_bytes, resample
from eastkd.pipeline.core.reading import load_split, parse_bytes, resolve_targets
from eastkd.store import open_store

N_CLASSES = 10

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_demo(tmp: Path, clips_per_class: int, seconds: float) -> tuple[str, str]:
    from eastkd.pipeline.demo.data import render_demo_dataset
    from eastkd.pipeline.extract import ExtractOptions, extract

    manifest = render_demo_dataset(tmp / "data", clips_per_class=clips_per_class,
                                   seconds=seconds, seed=0, progress=False)
    store = tmp / "demo.zarr"
    extract(str(manifest), str(store), ExtractOptions(
        teacher="crepe-tiny", teacher_options={"hop_ms": 100}, progress=False, workers=0))
    return str(store), str(manifest)


class Trainer:
    """One student + FitNet loss + AdamW, re-created identically for every mode."""

    width: int | None = None  # student width (None: the registry default)

    def __init__(self, student: str, n_mels: int, n_classes: int, target_dim: int,
                 seed: int, device: torch.device | None = None) -> None:
        torch.manual_seed(seed)
        size = {"width": self.width} if self.width else {}
        self.model = registry.students.create(student, n_mels=n_mels, n_classes=n_classes,
                                              **size).to(device or "cpu")
        self.kd = registry.losses.create("fitnet", self.model.feature_dim, target_dim).to(
            device or "cpu")
        params = list(self.model.parameters()) + list(self.kd.parameters())
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)

    def step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, lam: float = 0.6) -> None:
        out = self.model(x)
        loss = (1 - lam) * F.cross_entropy(out.logits, y) + lam * self.kd(out.features, t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()


def summarise(times: list[float], items: int) -> dict:
    med = statistics.median(times)
    return {"epoch_s": round(med, 4), "epochs_s": [round(t, 4) for t in times],
            "clips_per_s": round(items / med, 1)}


def run(args: argparse.Namespace, tmp: Path | None) -> None:
    t_setup = time.perf_counter()
    store_path, manifest = (args.store, args.manifest) if tmp is None else \
        make_demo(tmp, args.clips_per_class, args.seconds)
    setup_s = time.perf_counter() - t_setup
    bs = args.batch_size

    with open_store(store_path) as store:
        key = args.targets or store.section_names("embeddings")[0]
        spec = resolve_targets(store, key)
        emb_attrs = store.embeddings(key).attrs if store.has_section("embeddings", key) else {}
        t0 = time.perf_counter()
        mem = load_split(store, "train", spec)
        load_s = time.perf_counter() - t0
        stream = load_split(store, "train", spec, memory_limit=0, workers=0)
        items = store.items
        n_classes = len(items.class_names)
        paths = [items.paths[r] for r in mem.rows]
        seg = Segment(**{k: v for k, v in store.features("logmel").attrs["segment"].items()
                         if k in ("seconds", "crop")})
        chunk = mem.stream.unit
    n_mels = mem.input_shape[0]
    if not os.path.isabs(paths[0]) and manifest:
        paths = [os.path.join(os.path.dirname(os.path.abspath(manifest)), p) for p in paths]

    def epoch_from(data) -> Callable[[Trainer, torch.Generator], int]:
        def run(trainer: Trainer, gen: torch.Generator) -> int:
            n = 0
            for b in data.batches(bs, gen, drop_last_below=2):
                trainer.step(b.x, b.y, b.t)
                n += len(b.y)
            return n
        return run

    xs, ys = mem.stream.resident["x"].clone(), mem.labels.clone()
    ts = mem.stream.resident["t"].clone()

    def memory_batches(gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(len(ys), generator=gen)
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            if len(idx) >= 2:
                yield idx

    def epoch_memory(trainer: Trainer, gen: torch.Generator) -> int:
        n = 0
        for idx in memory_batches(gen):
            trainer.step(xs[idx], ys[idx], ts[idx])
            n += len(idx)
        return n

    topts = dict((emb_attrs.get("identity") or {}).get("teacher_options") or {})
    topts = {k: v for k, v in topts.items() if k == "hop_ms"}
    teacher = registry.teachers.create(args.teacher, **topts)
    teacher.model.eval()
    n_t = seg.samples(teacher.sample_rate)

    def epoch_teacher(trainer: Trainer, gen: torch.Generator, max_batches: int) -> int:
        n = 0
        for b, idx in enumerate(memory_batches(gen)):
            if b == max_batches:
                break
            waves = []
            for i in idx.tolist():
                mono, sr = decode(read_bytes(paths[i])[0])
                waves.append(fit_segment(resample(mono, sr, teacher.sample_rate), n_t, seg.crop))
            with torch.inference_mode():
                t = teacher(torch.stack(waves)).clip.float()
            trainer.step(xs[idx], ys[idx], t.clone())
            n += len(idx)
        return n

    # The three loaders take turns epoch by epoch, so machine noise hits them alike.
    modes = {"in_memory": epoch_memory, "store_loaded": epoch_from(mem),
             "store_streamed": epoch_from(stream)}
    trainers = {m: Trainer(args.student, n_mels, n_classes, spec.dim, args.seed) for m in modes}
    gens = {m: torch.Generator().manual_seed(args.seed) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    n_items = 0
    for epoch in range(args.epochs + 1):  # epoch 0 warms up
        for m, fn in modes.items():
            t0 = time.perf_counter()
            n_items = fn(trainers[m], gens[m])
            if epoch:
                times[m].append(time.perf_counter() - t0)
    results = {m: summarise(times[m], n_items) for m in modes}
    # The online teacher is slow: time --teacher-batches batches and scale to the epoch.
    trainer = Trainer(args.student, n_mels, n_classes, teacher.embedding_dim, args.seed)
    t0 = time.perf_counter()
    done = epoch_teacher(trainer, torch.Generator().manual_seed(args.seed), args.teacher_batches)
    t_teacher = (time.perf_counter() - t0) * n_items / done
    results["teacher_online"] = {"epoch_s": round(t_teacher, 4),
                                 "clips_per_s": round(n_items / t_teacher, 1),
                                 "clips_timed": done}
    results["store_loaded"]["load_s"] = round(load_s, 4)
    mem_s = results["in_memory"]["epoch_s"]
    print(json.dumps({
        "store": store_path if tmp is None else "rendered demo (removed)",
        "targets": f"{spec.section}/{spec.array}", "train_items": len(ys),
        "input_shape": list(mem.input_shape), "chunk_items": chunk, "student": args.student,
        "batch_size": bs, "teacher": args.teacher, "teacher_options": topts,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "setup_s": round(setup_s, 1), **results,
        "store_vs_memory_speed": {
            "loaded": round(mem_s / results["store_loaded"]["epoch_s"], 3),
            "loaded_incl_load": round(mem_s / (results["store_loaded"]["epoch_s"] + load_s), 3),
            "streamed": round(mem_s / results["store_streamed"]["epoch_s"], 3)},
        "teacher_online_vs_store_slowdown": round(
            results["teacher_online"]["epoch_s"] / results["store_streamed"]["epoch_s"], 2),
    }, indent=2))


# -- synthetic store mode ------------------------------------------------------------------------
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _stream_epoch(trainer: Trainer, data, gen: torch.Generator, bs: int,
                  dev: torch.device) -> int:
    """One epoch as distill feeds it: pinned batches, non-blocking copies, no host sync."""
    steps = 0
    for b in data.batches(bs, gen, drop_last_below=2):
        trainer.step(b.x.to(dev, non_blocking=True), b.y.to(dev, non_blocking=True),
                     b.t.to(dev, non_blocking=True))
        steps += 1
    _sync(dev)
    return steps


def _floor_epoch(trainer: Trainer, batches: list[Batch], dev: torch.device) -> int:
    """The compute floor: the same steps on batches already resident on the device."""
    for x, y, t in batches:
        trainer.step(x, y, t)
    _sync(dev)
    return len(batches)


def _distinct_classes(labels: list[np.ndarray], bs: int) -> float:
    return float(np.mean([len(np.unique(y)) for y in labels if len(y) == bs]))


def _diversity(data, bs: int, seed: int) -> dict[str, float]:
    """Mean distinct classes per batch: streamed, full shuffle, and a 4-unit window."""
    gen = torch.Generator().manual_seed(seed)
    streamed = [b.y.numpy() for b in data.batches(bs, gen)]
    labels = data.labels.numpy()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    full = [labels[perm[i:i + bs]] for i in range(0, len(perm), bs)]
    units = data.stream.window_units
    data.stream.window_units = 4
    narrow = [b.y.numpy() for b in data.batches(bs, gen)]
    data.stream.window_units = units
    out = {"streamed": _distinct_classes(streamed, bs), "full_shuffle": _distinct_classes(full, bs),
           "window_of_4_chunks": _distinct_classes(narrow, bs), "window_units": units}
    out["streamed_vs_full"] = round(out["streamed"] / out["full_shuffle"], 3)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def _proc_status(pid: int | str) -> dict[str, str]:
    """Fields of ``/proc/PID/status`` (Linux); {} for a process gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def _reader_peaks_mib() -> list[float]:
    """Peak RSS (VmHWM) of each reader process under this one (DataLoader workers name
    themselves ``pt_data_worker``), read while they still run."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        parent = _proc_status(pid).get("PPid")
        if parent:
            children.setdefault(int(parent), []).append(int(pid))
    peaks, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            st = _proc_status(pid)
            if st.get("Name") == "pt_data_worker" and "VmHWM" in st:
                peaks.append(round(int(st["VmHWM"].split()[0]) / 1024, 1))
    return peaks


def _rss_child(store: str, args: argparse.Namespace) -> None:
    """In a fresh process: the statistics and one streamed epoch of batches moved to the device
    (no training: its memory does not depend on N); print the peak RSS of it and of each of
    its reader processes."""
    dev = torch.device(args.device)
    if args.glibc_heap:  # the baseline: glibc's own heap policy, as before eastkd fixed it
        from eastkd.pipeline.core import reading

        reading.return_large_blocks = reading.trim_heap = lambda: None
    with open_store(store) as s:
        spec = resolve_targets(s, KEY)
        data = load_split(s, "train", spec, memory_limit=args.memory_limit, workers=args.workers,
                          shuffle_buffer=args.shuffle_buffer, pin_memory=dev.type == "cuda")
        data.input_stats()
        data.target_stats()
        for b in data.batches(args.batch_size, torch.Generator().manual_seed(0)):
            b.x.to(dev, non_blocking=True), b.t.to(dev, non_blocking=True)
        workers = _reader_peaks_mib()
        data.close()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"main_mib": round(own / 1024, 1), "workers_mib": workers,
                      "worker_mib": max(workers, default=round(kids / 1024, 1))}))


def _peak_rss(store: str, args: argparse.Namespace, glibc_heap: bool = False
              ) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--rss-child", store, "--memory-limit",
           str(args.memory_limit), "--shuffle-buffer", str(args.shuffle_buffer),
           "--device", args.device, "--student", args.student,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if glibc_heap:
        cmd.append("--glibc-heap")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _timed(modes: dict[str, Callable[[], int]], epochs: int) -> dict[str, dict]:
    """Median epoch seconds per mode; the modes take turns (epoch 0 warms up)."""
    times: dict[str, list[float]] = {m: [] for m in modes}
    steps = {}
    for epoch in range(epochs + 1):
        for m, fn in modes.items():
            t0 = time.perf_counter()
            steps[m] = fn()
            if epoch:
                times[m].append(time.perf_counter() - t0)
    return {m: {"epoch_s": round(statistics.median(t), 4), "best_epoch_s": round(min(t), 4),
                "epochs_s": [round(x, 4) for x in t], "steps": steps[m]}
            for m, t in times.items()}


def _rss_ratios(rss: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Peak RSS at 4N and 16N over N: the main process, and the largest reader process."""
    base = rss["N"]
    return {k: {"main": round(v["main_mib"] / base["main_mib"], 3),
                "worker": round(v["worker_mib"] / base["worker_mib"], 3)}
            for k, v in rss.items() if k != "N"}


def run_synthetic(args: argparse.Namespace, tmp: Path) -> dict:
    dev = torch.device(args.device)
    bs = args.batch_size
    t0 = time.perf_counter()
    store = make_synthetic_store(str(tmp / "n.zarr"), args.items, N_CLASSES, args.n_mels,
                                 args.n_frames, args.target_dim, args.chunk_items)
    setup_s = time.perf_counter() - t0
    pin = dev.type == "cuda"
    with open_store(store) as s:
        spec = resolve_targets(s, KEY)
        mem = load_split(s, "train", spec, memory_limit=1 << 40, pin_memory=pin)
        streamed = load_split(s, "train", spec, memory_limit=args.memory_limit,
                              shuffle_buffer=args.shuffle_buffer, workers=args.workers,
                              pin_memory=pin)
        arrays = {"x": s.features().array("values"), "t": s.embeddings(KEY).array("clip")}
        stored_row = sum(int(np.prod(arrays[k].shape[1:])) * arrays[k].dtype.itemsize
                         for k in streamed.stream.streamed)  # resident arrays are read once
        store_bytes = s.nbytes_stored()
    n_mels = mem.input_shape[0]
    trainers = {m: Trainer(args.student, n_mels, N_CLASSES, spec.dim, args.seed, dev)
                for m in ("in_memory", "streamed", "compute_floor")}
    gens = {m: torch.Generator().manual_seed(args.seed) for m in trainers}
    floor_batches = [(b.x.to(dev), b.y.to(dev), b.t.to(dev))
                     for b in mem.batches(bs, torch.Generator().manual_seed(args.seed), 2)]
    results = _timed({
        "in_memory": lambda: _stream_epoch(trainers["in_memory"], mem, gens["in_memory"], bs,
                                           dev),
        "streamed": lambda: _stream_epoch(trainers["streamed"], streamed, gens["streamed"], bs,
                                          dev),
        "compute_floor": lambda: _floor_epoch(trainers["compute_floor"], floor_batches, dev),
    }, args.epochs)
    read = streamed.stream.last_read_bytes
    needed = len(streamed) * stored_row
    diversity = _diversity(streamed, bs, args.seed)
    streamed.close()
    rss = {"N": _peak_rss(store, args)}
    before = {"N": _peak_rss(store, args, glibc_heap=True)}
    for k in (4, 16):
        bigger = make_synthetic_store(str(tmp / f"{k}n.zarr"), k * args.items, N_CLASSES,
                                      args.n_mels, args.n_frames, args.target_dim,
                                      args.chunk_items)
        rss[f"{k}N"] = _peak_rss(bigger, args)
        before[f"{k}N"] = _peak_rss(bigger, args, glibc_heap=True)
        shutil.rmtree(bigger, ignore_errors=True)

    def ratio(a: str, b: str, key: str) -> float:
        return round(results[a][key] / results[b][key], 3)

    return {
        "mode": "synthetic class-sorted store", "items": args.items,
        "train_items": len(streamed), "input_shape": list(mem.input_shape),
        "target_dim": spec.dim, "chunk_items": args.chunk_items, "store_bytes": store_bytes,
        "train_float32_bytes": len(streamed) * (int(np.prod(mem.input_shape)) + spec.dim) * 4,
        "memory_limit": args.memory_limit, "shuffle_buffer": args.shuffle_buffer,
        "streamed_workers": streamed.workers, "streamed_arrays": streamed.stream.streamed,
        "student": args.student, "batch_size": bs, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if pin else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(), "setup_s": round(setup_s, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch": torch.__version__},
        **results,
        "streamed_vs_memory_speed": ratio("in_memory", "streamed", "epoch_s"),
        "streamed_vs_compute_floor": ratio("streamed", "compute_floor", "epoch_s"),
        "best_epoch_ratios": {
            "streamed_vs_memory_speed": ratio("in_memory", "streamed", "best_epoch_s"),
            "streamed_vs_compute_floor": ratio("streamed", "compute_floor", "best_epoch_s")},
        "bytes_read_per_epoch": read, "bytes_needed": needed,
        "read_ratio": round(read / needed, 3),
        "peak_rss_mib": rss,
        "rss_vs_n": _rss_ratios(rss),
        "baseline_glibc_heap": {"peak_rss_mib": before, "rss_vs_n": _rss_ratios(before)},
        "batch_distinct_classes": diversity,
        "targets": {"streamed_vs_memory_speed": ">= 0.9", "streamed_vs_compute_floor": "<= 1.3",
                    "read_ratio": "<= 1.2", "rss_vs_n": "<= 1.2 at 16N (main and each worker)",
                    "streamed_vs_full": ">= 0.9"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", nargs="?", help="an extracted store  [default: render the demo]")
    ap.add_argument("manifest", nargs="?", help="the store's dataset manifest (for audio paths)")
    ap.add_argument("--targets", help="embeddings/targets name  [default: the store's only one]")
    ap.add_argument("--teacher", default="crepe", help="teacher run online (crepe, crepe-tiny)")
    ap.add_argument("--student", default="vgg")
    ap.add_argument("--width", type=int, help="student width [default: 4 synthetic, else the "
                    "student's own]")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per mode (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    ap.add_argument("--teacher-batches", type=int, default=2,
                    help="batches timed with the online teacher (scaled to one epoch)")
    ap.add_argument("--clips-per-class", type=int, default=32, help="demo size when rendering")
    ap.add_argument("--seconds", type=float, default=2.0, help="demo clip length when rendering")
    ap.add_argument("--seed", type=int, default=0)
    syn = ap.add_argument_group("synthetic store mode")
    syn.add_argument("--items", type=int, help="build a class-sorted store of N items")
    syn.add_argument("--memory-limit", type=parse_bytes, default=parse_bytes("4M"))
    syn.add_argument("--shuffle-buffer", type=parse_bytes, default=parse_bytes("8M"))
    syn.add_argument("--workers", type=int, help="reader processes [default: automatic]")
    syn.add_argument("--device", default="cpu")
    syn.add_argument("--n-mels", type=int, default=32)
    syn.add_argument("--n-frames", type=int, default=32)
    syn.add_argument("--target-dim", type=int, default=64)
    syn.add_argument("--chunk-items", type=int, default=32)
    syn.add_argument("--out", help="also write the JSON here")
    syn.add_argument("--rss-child", help=argparse.SUPPRESS)
    syn.add_argument("--glibc-heap", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Trainer.width = args.width or (4 if args.items or args.rss_child else None)
    if args.rss_child:
        _rss_child(args.rss_child, args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="eastkd-bench-")) if args.items or not args.store \
        else None
    try:
        if args.items:
            result = run_synthetic(args, tmp)
            emit(result, args.out)
        else:
            run(args, tmp)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
