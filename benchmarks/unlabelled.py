"""Distill epoch time with unlabelled rows (two streams) against plain labelled rows.

Two synthetic stores of the same items and data (``synthetic.make_synthetic_store``): *plain*,
every item labelled, and *mixed*, every second train item unlabelled. At ``--unlabelled-ratio
1`` a mixed epoch draws half as many labelled batches, each with an unlabelled batch of the
same size: the same number of rows per epoch as a plain epoch, so the two epoch times compare
the cost of drawing two streams instead of one. A mixed epoch has half the steps of a plain
one, each of twice the rows, so a third mode, *plain-2x*, runs the plain store at twice the
batch size: the same steps and rows per step as *mixed*, one stream. Each mode runs
``--epochs`` epochs of a real ``distill`` (FitNet, both splits streamed with
``--memory-limit`` or resident), the modes taking turns ``--repeats`` times; an epoch's time
is history.csv's ``seconds`` (training plus validation, the same validation in both), the
first epoch of a run (reader start-up) left out; medians and minima (the epochs least
disturbed by other load on a shared machine) are reported.

    python benchmarks/unlabelled.py --items 8192 [--memory-limit 0] \
        [--out benchmarks/results/distill-unlabelled.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from emit import emit
from synthetic import KEY, make_synthetic_store

from eastkd.pipeline.core.reading import parse_bytes
from eastkd.pipeline.distill.train import distill


def _epoch_seconds(store: str, out: str, args: argparse.Namespace,
                   batch_size: int) -> tuple[list[float], dict]:
    r = distill(store, KEY, out, kd="fitnet", width=args.width, epochs=args.epochs,
                batch_size=batch_size, patience=0, progress=False, seed=0,
                memory_limit=args.memory_limit, workers=args.workers, overwrite=True,
                threads=args.threads)
    return [h["seconds"] for h in r.history[1:]], r.n_items


def run(args: argparse.Namespace, tmp: Path) -> dict:
    plain = make_synthetic_store(str(tmp / "plain.zarr"), args.items)
    mixed = make_synthetic_store(str(tmp / "mixed.zarr"), args.items, unlabelled_every=2)
    modes = (("plain", plain, args.batch_size), ("plain-2x", plain, 2 * args.batch_size),
             ("mixed", mixed, args.batch_size))
    times: dict[str, list[float]] = {m: [] for m, _, _ in modes}
    items: dict[str, dict] = {}
    for _ in range(args.repeats):  # the modes take turns, so machine noise hits them alike
        for mode, store, bs in modes:
            secs, items[mode] = _epoch_seconds(store, str(tmp / f"run-{mode}"), args, bs)
            times[mode] += secs
    med = {m: statistics.median(t) for m, t in times.items()}
    low = {m: min(t) for m, t in times.items()}  # least disturbed by other load
    rows = {m: items[m]["train"] + items[m].get("unlabelled", 0) for m in items}
    return {
        "benchmark": "distill epoch with unlabelled rows (two streams) vs plain rows",
        "items": args.items, "train_rows_per_epoch": rows, "n_items": items,
        "batch_size": args.batch_size, "unlabelled_ratio": 1.0,
        "memory_limit": args.memory_limit, "workers": args.workers,
        "epoch_seconds": times, "median_epoch_seconds": med,
        "mixed_over_plain": round(med["mixed"] / med["plain"], 3),
        "mixed_over_plain_2x": round(med["mixed"] / med["plain-2x"], 3),
        "min_epoch_seconds": low,
        "min_mixed_over_plain_2x": round(low["mixed"] / low["plain-2x"], 3),
        "load_average": os.getloadavg(),
        "threads": args.threads, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=8192, help="items per store (80%% train)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="per run; the first is left out")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, taking turns")
    ap.add_argument("--memory-limit", type=parse_bytes, default=parse_bytes("0"),
                    help="0 streams both splits from the store (flat memory)")
    ap.add_argument("--workers", type=int, default=0, help="reader processes per stream")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the JSON result here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="eastkd-unlabelled-") as tmp:
        result = run(args, Path(tmp))
    emit(result, args.out)


if __name__ == "__main__":
    main()
