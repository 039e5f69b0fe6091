"""The README's results table: the demo's students over seeds, paired with the baseline.

    python benchmarks/demo_table.py [--dir demo] [--seeds 0 1 2] [--epochs 30]
                                    [--labels-per-class 10]
                                    [--unlabelled | --no-unlabelled]
                                    [--progress | --no-progress]
                                    [--out benchmarks/results/demo_table.json]

Runs ``eastkd demo`` (the same code, :func:`eastkd.pipeline.demo.run.run_demo`) once per seed in
``--dir``: the audio and the store are made once, the students once per seed, and each student
is reported as it finishes. Finished runs are reused, so the seeds can also be trained by
separate processes (``--seeds 1`` in one, ``--seeds 2`` in another, after the first has built
the store) and tabulated by a last call over all of them.

For every student: test accuracy per seed, mean ± sample standard deviation, and the paired
per-seed difference to the task-only baseline of the same seed (mean ± sd, and on how many seeds
it is above / equal / below). The teacher's linear probe on the same labels is the reference row.
Writes the JSON (with the machine and its load) to ``--out`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

METRIC = "accuracy"


def _say(line: str) -> None:
    print(line, flush=True)


def _train_seconds(run_dir: Path) -> float:
    """Sum of the epochs' wall seconds in the run's ``history.csv``."""
    with open(run_dir / "history.csv", encoding="utf-8") as f:
        return round(sum(float(r["seconds"]) for r in csv.DictReader(f)), 1)


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def _rows(reports: list[dict[str, Any]], root: Path) -> dict[str, dict[str, Any]]:
    """Per student: values per seed, mean ± sd, paired differences to the seed's baseline."""
    rows: dict[str, dict[str, Any]] = {}
    for name in reports[0]["results"]:
        values = [r["results"][name]["metrics"][METRIC] for r in reports]
        diffs = [v - r["results"]["baseline"]["metrics"][METRIC]
                 for v, r in zip(values, reports)]
        rows[name] = {
            "kd": reports[0]["results"][name]["kd"],
            "targets": reports[0]["results"][name]["targets"],
            "values": values, **_mean_sd(values),
            "train_seconds": [_train_seconds(root / r["setting"] / name) for r in reports],
        }
        if name != "baseline":
            rows[name]["paired_diff"] = {"values": diffs, **_mean_sd(diffs),
                                         "above": sum(d > 0 for d in diffs),
                                         "equal": sum(d == 0 for d in diffs),
                                         "below": sum(d < 0 for d in diffs)}
    return rows


def _markdown(rows: dict[str, dict[str, Any]], probe: dict[str, float], n: int) -> str:
    lines = [f"| student | test {METRIC} (mean ± sd, {n} seeds) | per seed "
             f"| paired difference to the baseline (mean ± sd; above / equal / below) |",
             "|---|---|---|---|",
             f"| teacher's linear probe (reference, same labels) | {probe['test']:.3f} "
             "| — | — |"]
    for name, r in rows.items():
        per_seed = " / ".join(f"{v:.3f}" for v in r["values"])
        d = r.get("paired_diff")
        diff = (f"{d['mean']:+.3f} ± {d['sd']:.3f}; {d['above']} / {d['equal']} / {d['below']}"
                if d else "—")
        lines.append(f"| {name} | {r['mean']:.3f} ± {r['sd']:.3f} | {per_seed} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    from eastkd.pipeline.demo.run import DemoOptions, run_demo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo", help="demo folder (rendered and extracted once)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=DemoOptions.epochs)
    ap.add_argument("--student", default=DemoOptions.student)
    ap.add_argument("--dim", type=int, default=DemoOptions.dim)
    ap.add_argument("--labels-per-class", type=int, default=DemoOptions.labels_per_class,
                    help="labels kept per class in train (0: every label)")
    ap.add_argument("--unlabelled", action=argparse.BooleanOptionalAction,
                    default=DemoOptions.unlabelled,
                    help="keep the other training clips as unlabelled rows (KD only)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="tqdm bars (--progress), none (--no-progress); default: bars on a "
                         "terminal, else a plain line every 10 %% or 30 s")
    ap.add_argument("--out", default="benchmarks/results/demo_table.json")
    args = ap.parse_args()

    started, load_before = time.perf_counter(), os.getloadavg()
    reports = []
    for seed in args.seeds:
        _say(f"== seed {seed}")
        reports.append(run_demo(Path(args.dir), DemoOptions(
            seed=seed, epochs=args.epochs, student=args.student, dim=args.dim,
            labels_per_class=args.labels_per_class or None, unlabelled=args.unlabelled,
            progress=args.progress), say=_say))
    rows = _rows(reports, Path(args.dir) / "runs")
    probe = reports[0]["probe"]
    result = {
        "command": "python " + " ".join(sys.argv) + " (distill --threads 1, the default)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "metric": METRIC, "split": "test", "seeds": args.seeds,
        "teacher": reports[0]["teacher"], "families": reports[0]["families"],
        "labels_per_class": reports[0]["labels_per_class"],
        "unlabelled": reports[0]["unlabelled"],
        "epochs": args.epochs,
        "student": args.student, "dim": args.dim, "probe": probe, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _say(f"\nwrote {args.out}\n")
    _say(_markdown(rows, probe, len(args.seeds)))


if __name__ == "__main__":
    main()
