"""Benchmark: what one distillation epoch costs when its data comes from the store.

Three ways to run the same epoch (same student, FitNet loss, batch size, shuffling seed):

* ``store``: the distill loader (:mod:`eastkd.pipeline.reading`) reading inputs and targets
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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from eastkd.pipeline import registry
from eastkd.pipeline.audio import Segment, decode, fit_segment, read_bytes, resample
from eastkd.pipeline.reading import load_split, resolve_targets
from eastkd.store import open_store

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_demo(tmp: Path, clips_per_class: int, seconds: float) -> tuple[str, str]:
    from eastkd.pipeline.demo_data import render_demo_dataset
    from eastkd.pipeline.extract import ExtractOptions, extract

    manifest = render_demo_dataset(tmp / "data", clips_per_class=clips_per_class,
                                   seconds=seconds, seed=0, progress=False)
    store = tmp / "demo.zarr"
    extract(str(manifest), str(store), ExtractOptions(
        teacher="crepe-tiny", teacher_options={"hop_ms": 100}, progress=False, workers=0))
    return str(store), str(manifest)


class Trainer:
    """One student + FitNet loss + AdamW, re-created identically for every mode."""

    def __init__(self, student: str, n_mels: int, n_classes: int, target_dim: int,
                 seed: int) -> None:
        torch.manual_seed(seed)
        self.model = registry.students.create(student, n_mels=n_mels, n_classes=n_classes)
        self.kd = registry.losses.create("fitnet", self.model.feature_dim, target_dim)
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
        stream = load_split(store, "train", spec, memory_limit=0)
        items = store.items
        n_classes = len(items.class_names)
        paths = [items.paths[r] for r in mem.rows]
        seg = Segment(**{k: v for k, v in store.features("logmel").attrs["segment"].items()
                         if k in ("seconds", "crop")})
        chunk = mem.chunk
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

    xs, ys, ts = mem.inputs.clone(), mem.labels.clone(), mem.targets.clone()

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", nargs="?", help="an extracted store  [default: render the demo]")
    ap.add_argument("manifest", nargs="?", help="the store's dataset manifest (for audio paths)")
    ap.add_argument("--targets", help="embeddings/targets name  [default: the store's only one]")
    ap.add_argument("--teacher", default="crepe", help="teacher run online (crepe, crepe-tiny)")
    ap.add_argument("--student", default="vgg")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per mode (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    ap.add_argument("--teacher-batches", type=int, default=2,
                    help="batches timed with the online teacher (scaled to one epoch)")
    ap.add_argument("--clips-per-class", type=int, default=32, help="demo size when rendering")
    ap.add_argument("--seconds", type=float, default=2.0, help="demo clip length when rendering")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None if args.store else Path(tempfile.mkdtemp(prefix="eastkd-bench-"))
    try:
        run(args, tmp)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
