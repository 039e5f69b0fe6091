"""The README's label-scarce accuracy table (issues 19 and 24): does distillation pay when most
training audio has no label?

On the bundled demo (``render_demo_dataset``: ``--families`` GM instrument families,
``--clips-per-class`` clips of ``--seconds`` s at 44.1 kHz), with one fixed split per class
(``--valid``/``--test`` clips, the rest train; the same valid and test for every setting), and
K labels per class in train (``--labels`` K, nested: the K = 5 items are among the K = 20 ones),
every other train clip unlabelled (an empty label in the manifest). Per K one store without
views and one with ``--views V --view-seconds S`` (aisfx teacher: one 512-d embedding per
2.276 s block); on each, ``compress --method probe --name soft`` (fitted on the labelled train
rows) and ``eastkd probe`` (the teacher's own linear probe: the headroom). Rows, each over
``--seeds`` with the same student (``--student``, ``--width``, batch 16, ``--patience 0``:
the best-validation epoch is kept) and the same optimiser steps: the rows on all train rows
run ``--epochs`` passes over the KD pool, the rows on labelled rows only as many epochs as give
the same steps (``row_epochs``); ``--jobs`` runs at once, each on one thread:

* ``baseline``: ``--kd none`` (labelled rows only);
* ``kl-labelled``: ``--targets soft --kd kl --unlabelled-ratio 0`` (KD on labelled rows only);
* ``kl-all``: ``--targets soft --kd kl`` (labelled + unlabelled rows, ratio 1);
* ``kl-all-views``: the same on the store with views (one view per item per epoch).

Reports test accuracy (each run's best-validation epoch, from metrics.json) as mean ± sd per
row and K, and the paired per-seed difference to the baseline (mean ± sd, seeds improved).
Stores and runs are kept in ``--dir`` and reused by a rerun (finished runs are not retrained).

    python benchmarks/label_scarce.py [--dir /tmp/label-scarce] [--seeds 0 1 2 3 4] \
        [--epochs 10] [--width 4] [--jobs 2] [--out benchmarks/results/label_scarce.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

TEACHER = "aisfx"
ROWS = ("baseline", "kl-labelled", "kl-all", "kl-all-views")


def _eastkd(*args: str) -> str:
    """Run one ``eastkd`` command (the venv's CLI); return its stdout, fail loudly."""
    cmd = [str(Path(sys.executable).with_name("eastkd")), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def write_manifests(demo_manifest: Path, out_dir: Path, labels: list[int],
                    n_valid: int, n_test: int, seed: int) -> dict[int, Path]:
    """One manifest per K: a fixed per-class split (same valid/test for every K) and K labelled
    train items per class, the first K of one seeded order (so smaller K nest in larger)."""
    with open(demo_manifest, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r)
    rng = np.random.default_rng(seed)
    plan: list[tuple[dict[str, str], str, int]] = []  # (row, split, rank within train)
    for cls in sorted(by_class):
        items = sorted(by_class[cls], key=lambda r: r["id"])
        order = rng.permutation(len(items))
        for rank, i in enumerate(order):
            split = "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
            plan.append((items[int(i)], split, rank - n_valid - n_test))
    paths = {}
    for k in labels:
        path = out_dir / f"manifest-k{k}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["id", "path", "label", "split"])
            for r, split, train_rank in sorted(plan, key=lambda p: p[0]["id"]):
                keep = split != "train" or train_rank < k
                audio = (demo_manifest.parent / r["path"]).resolve()
                w.writerow([r["id"], str(audio), r["label"] if keep else "", split])
        paths[k] = path
    return paths


def build_store(manifest: Path, store: Path, args: argparse.Namespace, views: bool) -> float:
    """Extract (a no-op rerun when done), fit the probe's soft labels; return the seconds of the
    store's first extract (recorded beside the stores; a store found already built when the
    record is missing gets this call's time)."""
    t0 = time.perf_counter()
    fresh = not store.exists()
    extra = ["--views", str(args.views), "--view-seconds", str(args.view_seconds)] if views else []
    _eastkd("extract", str(manifest), str(store), "-t", TEACHER, "--segment", str(args.seconds),
            "--workers", "0", "--no-progress", *extra)
    seconds = time.perf_counter() - t0
    record = store.parent / "extract-seconds.json"  # the first (real) extract's time per store
    times = json.loads(record.read_text()) if record.is_file() else {}
    if fresh or store.name not in times:
        times[store.name] = round(seconds, 1)
        record.write_text(json.dumps(times, indent=2) + "\n")
    seconds = times[store.name]
    if not (store / "targets" / "soft").exists():
        _eastkd("compress", str(store), "--method", "probe", "--name", "soft", "--no-progress")
    return seconds


def render_and_build(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Render the demo, write the manifests, build every store; return their paths and probes."""
    from eastkd.pipeline.demo.data import render_demo_dataset

    manifest = render_demo_dataset(root / "data", clips_per_class=args.clips_per_class,
                                   seconds=args.seconds, sample_rate=44100,
                                   families=args.families)
    manifests = write_manifests(manifest, root, args.labels, args.valid, args.test, args.seed)
    stores: dict[str, Any] = {}
    for k, m in manifests.items():
        for views in (False, True):
            name = f"k{k}{'-views' if views else ''}"
            path = root / f"{name}.zarr"
            secs = build_store(m, path, args, views)
            probe = json.loads(_eastkd("probe", str(path), "--embeddings", TEACHER, "--json"))
            stores[name] = {"path": str(path), "extract_seconds": secs,
                            "probe": probe}
            print(f"{name}: first extract {secs:.0f} s; probe test accuracy "
                  f"{_probe_test(probe):.3f}", flush=True)
    return stores


def _run_kwargs(row: str) -> tuple[str, dict[str, Any]]:
    """(store suffix, distill keyword arguments) of one table row."""
    if row == "baseline":
        return "", {"kd": "none"}
    kw: dict[str, Any] = {"targets": "soft", "kd": "kl"}
    if row == "kl-labelled":
        kw["unlabelled_ratio"] = 0.0
    return ("-views" if row == "kl-all-views" else ""), kw


def row_epochs(row: str, k: int, args: argparse.Namespace) -> int:
    """Epochs of a row at K labels per class: ``--epochs`` for the rows on all train rows; the
    rows on labelled rows only get as many more epochs as give them the same optimiser steps
    (an epoch is one pass over the KD pool, so at ratio 1 it has max(labelled, unlabelled)
    rows' worth of labelled batches, against labelled rows' worth without the pool)."""
    if row in ("kl-all", "kl-all-views"):
        return args.epochs
    n_train = args.clips_per_class - args.valid - args.test
    labelled = min(k, n_train)
    return math.ceil(args.epochs * max(labelled, n_train - labelled) / labelled)


def _train_one(store: str, run_dir: str, kw: dict[str, Any]) -> dict[str, Any]:
    """One distill run (in a worker process); a finished run is read back, not retrained."""
    from eastkd.pipeline.distill.train import distill
    from eastkd.pipeline.runs.rundir import is_finished

    t0 = time.perf_counter()
    if not is_finished(run_dir):
        kw = dict(kw)
        distill(store, kw.pop("targets", None), run_dir, threads=1, progress=False, **kw)
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"test_accuracy": m["test"]["accuracy"], "valid_accuracy": m["valid"]["accuracy"],
            "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
            "n_items": m["n_items"], "seconds": m["seconds"],
            "wall_seconds_now": round(time.perf_counter() - t0, 1)}


def train_all(args: argparse.Namespace, root: Path, stores: dict[str, Any],
              save: Any) -> list[dict[str, Any]]:
    """Every (seed, K, row) run on ``--jobs`` worker processes, seed-major so that a partial
    table stays paired; ``save`` is called after each run."""
    setting = f"{args.student}-w{args.width}-e{args.epochs}-steps"
    tasks = []
    for seed in args.seeds:
        for k in args.labels:
            for row in ROWS:
                suffix, kw = _run_kwargs(row)
                kw.update(student=args.student, width=args.width, seed=seed, patience=0,
                          epochs=row_epochs(row, k, args))
                run_dir = root / "runs" / setting / f"k{k}" / row / f"s{seed}"
                tasks.append(({"k": k, "row": row, "seed": seed, "run_dir": str(run_dir)},
                              (stores[f"k{k}{suffix}"]["path"], str(run_dir), kw)))
    if args.finished_only:  # a partial table of the runs already finished
        from eastkd.pipeline.runs.rundir import is_finished
        tasks = [t for t in tasks if is_finished(t[0]["run_dir"])]
    runs: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_train_one, *job): head for head, job in tasks}
        for fut in as_completed(futures):
            run = {**futures[fut], **fut.result()}
            runs.append(run)
            print(f"k={run['k']} {run['row']:<13} seed {run['seed']}: test "
                  f"{run['test_accuracy']:.3f} ({run['epochs_run']} epochs, "
                  f"{run['seconds']:.0f} s)", flush=True)
            save(sorted(runs, key=lambda r: (r["seed"], r["k"], ROWS.index(r["row"]))))
    return sorted(runs, key=lambda r: (r["seed"], r["k"], ROWS.index(r["row"])))


def _mean_sd(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "sd": sd, "n": len(values)}


def summarise(runs: list[dict[str, Any]], labels: list[int]) -> dict[str, Any]:
    """Per K and row: test accuracy mean ± sd, and the paired difference to the baseline over
    the seeds both have (mean ± sd, seeds improved / tied / worse)."""
    table: dict[str, Any] = {}
    for k in labels:
        acc = {row: {r["seed"]: r["test_accuracy"] for r in runs
                     if r["k"] == k and r["row"] == row} for row in ROWS}
        base = acc["baseline"]
        for row in ROWS:
            if not acc[row]:
                continue
            entry = {"test_accuracy": _mean_sd(list(acc[row].values()))}
            paired = [acc[row][s] - base[s] for s in acc[row] if s in base]
            if row != "baseline" and paired:
                entry["minus_baseline"] = {
                    **_mean_sd(paired), "improved": sum(d > 1e-9 for d in paired),
                    "tied": sum(abs(d) <= 1e-9 for d in paired),
                    "worse": sum(d < -1e-9 for d in paired)}
            table[f"k{k}/{row}"] = entry
    return table


def markdown(table: dict[str, Any], stores: dict[str, Any], labels: list[int]) -> str:
    """The README table: one line per row, one column pair per K."""
    head = "| student trained with | " + " | ".join(
        f"K = {k}: test acc. | K = {k}: − baseline (seeds better/tied/worse)" for k in labels)
    lines = [head + " |", "|---" * (1 + 2 * len(labels)) + "|"]
    probe = ["| linear probe of aisfx (`eastkd probe`, labelled train rows)"]
    for k in labels:
        probe += [f"{_probe_test(stores[f'k{k}']['probe']):.3f}", "—"]
    lines.append(" | ".join(probe) + " |")
    for row in ROWS:
        cells = [f"| {row}"]
        for k in labels:
            e = table.get(f"k{k}/{row}")
            if e is None:
                cells += ["not run", "—"]
                continue
            a = e["test_accuracy"]
            cells.append(f"{a['mean']:.3f} ± {a['sd']:.3f}")
            d = e.get("minus_baseline")
            cells.append("—" if d is None else
                         f"{d['mean']:+.3f} ± {d['sd']:.3f} ({d['improved']}/{d['tied']}/"
                         f"{d['worse']})")
        lines.append(" | ".join(cells) + " |")
    return "\n".join(lines)


def _probe_test(probe: Any) -> float:
    """The probe's test accuracy from `eastkd probe --json` output."""
    return float(probe["probes"][0]["test"]["accuracy"]["mean"])


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/label-scarce", help="stores and runs (reused)")
    ap.add_argument("--families", nargs="+",
                    default=["piano", "guitar", "strings", "brass", "reed"])
    ap.add_argument("--clips-per-class", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--valid", type=int, default=6, help="valid clips per class")
    ap.add_argument("--test", type=int, default=12, help="test clips per class")
    ap.add_argument("--labels", type=int, nargs="+", default=[5, 20],
                    help="labelled train clips per class (one store each)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--view-seconds", type=float, default=2.4)
    ap.add_argument("--seed", type=int, default=0, help="split and labelled-subset seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--student", default="vgg")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2, help="distill runs at once (processes)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: tabulate the runs already finished in --dir")
    ap.add_argument("--build-only", action="store_true", help="render and extract, no training")
    ap.add_argument("--out", default=None, help="results JSON (default: print only)")
    return ap


def main() -> None:
    args = _parser().parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    machine_start = _machine()
    stores = render_and_build(args, root)
    if args.build_only:
        return

    def save(runs: list[dict[str, Any]]) -> dict[str, Any]:
        report = {"benchmark": "label_scarce", "teacher": TEACHER, "machine": machine_start,
                  "machine_end": _machine(), "settings": {
                      k: v for k, v in vars(args).items() if k not in ("out", "build_only")},
                  "complete": len(runs) == len(args.seeds) * len(args.labels) * len(ROWS),
                  "distill": {"student": args.student, "width": args.width,
                              "epochs": {f"k{k}/{row}": row_epochs(row, k, args)
                                         for k in args.labels for row in ROWS},
                              "epochs_rule": "kl-all rows: --epochs; labelled-only rows: the "
                                             "same optimiser steps (row_epochs)",
                              "threads": 1, "kd": "kl on targets/soft", "lambda": 0.6,
                              "temperature": 1.0, "patience": 0, "batch_size": 16},
                  "stores": stores, "runs": runs,
                  "table": summarise(runs, args.labels),
                  "total_seconds": round(time.perf_counter() - t0, 1)}
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return report

    report = save(train_all(args, root, stores, save))
    print(json.dumps(report["table"], indent=2))
    print(markdown(report["table"], stores, args.labels))


if __name__ == "__main__":
    main()
