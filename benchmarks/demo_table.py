"""The README's results table: the demo's students over seeds, paired with the baseline.

    python benchmarks/demo_table.py [--dir demo] [--seeds 0 1 2] [--epochs 30]
                                    [--labels-per-class 10]
                                    [--unlabelled | --no-unlabelled]
                                    [--steps-matched | --no-steps-matched]
                                    [--progress | --no-progress]
                                    [--out benchmarks/results/demo_table.json]

Runs ``eastkd demo`` (the same code, :func:`eastkd.pipeline.demo.run.run_demo`) once per seed in
``--dir``: the audio and the store are made once, the students once per seed, and each student
is reported as it finishes. Finished runs are reused, so the seeds can also be trained by
separate processes (``--seeds 1`` in one, ``--seeds 2`` in another, after the first has built
the store) and tabulated by a last call over all of them.

With unlabelled rows a KD student's epoch is a pass over all training clips, so it takes more
optimisation steps than the task-only baseline's pass over the labelled ones. The table then
adds ``baseline-steps`` (unless ``--no-steps-matched``): the same task-only student trained for
as many steps as a KD student (its epochs scaled by the ratio of steps per epoch) and without
early stopping, scored at its best validation epoch like every run: the stronger, fairer
baseline. Its run lives beside the demo's students and is reused like them.

For every student: test accuracy per seed, mean ± sample standard deviation, and the paired
per-seed difference to the task-only baseline of the same seed (mean ± sd, and on how many seeds
it is above / equal / below), and to ``baseline-steps`` where there is one. The teacher's linear
probe on the same labels is the reference row. Writes the JSON (with the machine and its load)
to ``--out`` and prints the markdown table.
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
    from eastkd.pipeline.runs.rundir import HISTORY, run_file

    with open(run_file(str(run_dir), HISTORY), encoding="utf-8") as f:
        return round(sum(float(r["seconds"]) for r in csv.DictReader(f)), 1)


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


BASELINES = ("baseline", "baseline-steps")  # the task-only rows the others are paired with


def _steps_matched_baseline(report: dict[str, Any], root: Path, progress: bool | None
                            ) -> dict[str, Any] | None:
    """Train (or reuse) the task-only student with as many steps as the seed's KD students
    and no early stopping; its result as the demo reports a student's. None where the KD
    students take no more steps than the baseline (no unlabelled rows)."""
    from eastkd.pipeline.distill.evaluate import evaluate
    from eastkd.pipeline.distill.streams import steps_per_epoch
    from eastkd.pipeline.distill.train import distill
    from eastkd.pipeline.runs.rundir import is_finished, read_config

    kd_run = next(name for name, r in report["results"].items() if r["kd"] != "none")
    kd_config = read_config(str(root / report["setting"] / kd_run))
    pool = kd_config.get("unlabelled")
    if not pool:
        return None
    batch = kd_config["options"]["batch_size"]
    ratio = pool["steps_per_epoch"] / steps_per_epoch(kd_config["n_items"]["train"], 0, batch, 0)
    epochs = round(report["epochs"] * ratio)
    run_dir = root / report["setting"] / "baseline-steps"
    if not is_finished(str(run_dir)):
        distill(report["store"], None, str(run_dir), student=report["student"], kd="none",
                epochs=epochs, patience=0, seed=report["seed"], progress=progress)
    metrics = evaluate(str(run_dir), report["store"], split="test")["metrics"]
    _say(f"  {'baseline-steps':<16} test {METRIC} {metrics[METRIC]:.3f} ({epochs} epochs, "
         "as many steps as a KD student, no early stopping)")
    return {"kd": "none", "targets": None, "epochs": epochs, "patience": 0, "metrics": metrics}


def _paired(values: list[float], reports: list[dict[str, Any]], baseline: str
            ) -> dict[str, Any]:
    diffs = [v - r["results"][baseline]["metrics"][METRIC] for v, r in zip(values, reports)]
    return {"values": diffs, **_mean_sd(diffs), "above": sum(d > 0 for d in diffs),
            "equal": sum(d == 0 for d in diffs), "below": sum(d < 0 for d in diffs)}


def _rows(reports: list[dict[str, Any]], root: Path) -> dict[str, dict[str, Any]]:
    """Per student: values per seed, mean ± sd, paired differences to the seed's baselines."""
    rows: dict[str, dict[str, Any]] = {}
    baselines = [b for b in BASELINES if b in reports[0]["results"]]
    for name in reports[0]["results"]:
        values = [r["results"][name]["metrics"][METRIC] for r in reports]
        rows[name] = {
            "kd": reports[0]["results"][name]["kd"],
            "targets": reports[0]["results"][name]["targets"],
            "values": values, **_mean_sd(values),
            "train_seconds": [_train_seconds(root / r["setting"] / name) for r in reports],
        }
        if name not in BASELINES:
            rows[name]["paired_diff"] = _paired(values, reports, "baseline")
            if "baseline-steps" in baselines:
                rows[name]["paired_diff_steps"] = _paired(values, reports, "baseline-steps")
    return rows


def _diff_cell(d: dict[str, Any] | None) -> str:
    return (f"{d['mean']:+.3f} ± {d['sd']:.3f}; {d['above']} / {d['equal']} / {d['below']}"
            if d else "—")


def _markdown(rows: dict[str, dict[str, Any]], probe: dict[str, float], n: int) -> str:
    steps = any("paired_diff_steps" in r for r in rows.values())
    head = (f"| student | test {METRIC} (mean ± sd, {n} seeds) | per seed "
            f"| paired difference to the baseline (mean ± sd; above / equal / below) |"
            + (" paired difference to baseline-steps |" if steps else ""))
    lines = [head, "|---|---|---|---|" + ("---|" if steps else ""),
             f"| teacher's linear probe (reference, same labels) | {probe['test']:.3f} "
             "| — | — |" + (" — |" if steps else "")]
    for name, r in rows.items():
        per_seed = " / ".join(f"{v:.3f}" for v in r["values"])
        cells = [_diff_cell(r.get("paired_diff"))]
        if steps:
            cells.append(_diff_cell(r.get("paired_diff_steps")))
        lines.append(f"| {name} | {r['mean']:.3f} ± {r['sd']:.3f} | {per_seed} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from eastkd.pipeline.demo.run import DemoOptions, run_demo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dir", default="demo", help="demo folder (rendered and extracted once)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="training seeds, one demo run each")
    ap.add_argument("--epochs", type=int, default=DemoOptions.epochs,
                    help="student epochs per run (the demo's)")
    ap.add_argument("--student", default=DemoOptions.student, help="student architecture")
    ap.add_argument("--dim", type=int, default=DemoOptions.dim, help="PCA target size")
    ap.add_argument("--labels-per-class", type=int, default=DemoOptions.labels_per_class,
                    help="labels kept per class in train (0: every label)")
    ap.add_argument("--unlabelled", action=argparse.BooleanOptionalAction,
                    default=DemoOptions.unlabelled,
                    help="keep the other training clips as unlabelled rows (KD only)")
    ap.add_argument("--steps-matched", action=argparse.BooleanOptionalAction, default=True,
                    help="with unlabelled rows, add baseline-steps: the task-only student "
                         "trained as many steps as a KD student, without early stopping")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="tqdm bars (--progress), none (--no-progress); unset (None): bars on a "
                         "terminal, else a plain line every 10 %% or 30 s")
    ap.add_argument("--out", default="benchmarks/results/demo_table.json",
                    help="where the JSON figures are written")
    args = ap.parse_args()

    started, load_before = time.perf_counter(), os.getloadavg()
    reports = []
    for seed in args.seeds:
        _say(f"== seed {seed}")
        reports.append(run_demo(Path(args.dir), DemoOptions(
            seed=seed, epochs=args.epochs, student=args.student, dim=args.dim,
            labels_per_class=args.labels_per_class or None, unlabelled=args.unlabelled,
            progress=args.progress), say=_say))
        matched = (_steps_matched_baseline(reports[-1], Path(args.dir) / "runs", args.progress)
                   if args.steps_matched else None)
        if matched is not None:
            results = reports[-1]["results"]
            reports[-1]["results"] = {"baseline": results.pop("baseline"),
                                      "baseline-steps": matched, **results}
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
