"""The README's results table: baseline vs FitNet vs DC with raw, PCA and learned targets on the
bundled demo, mean ± std over seeds, evaluated on the demo's test split.

The demo (``eastkd demo``) trains 7 of the table's 12 students per seed (the task-only
baseline, FitNet and DC on the raw, PCA and learned targets); ``--dc-unbiased`` adds 3 and
``--teacher-linear`` 2. Each student is reported on its own line as it finishes.

    python benchmarks/demo_table.py [--dir demo] [--seeds 0 1 2] [--epochs 30] [--teacher-linear]
                                    [--dc-unbiased] [--progress | --no-progress]

``--teacher-linear`` adds FitNet and DC with the jointly trained linear layer on the raw
embeddings; ``--dc-unbiased`` adds the bias-corrected distance correlation on every target.
For every KD run the table also reports the KD term on the last epoch's training batches
(``train_kd``) and on a shuffled pairing of the same batches (``train_kd_shuffled``): when the
two are close the term carries little signal.

Prints one JSON object (per-run metrics, mean and std per row, KD terms), the `eastkd runs`
table of these runs and the markdown table; the figures come from `eastkd runs` (each run's
metrics.json: test metrics of its best epoch).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any


def _kd_terms(run_dir: Path) -> dict[str, float] | None:
    """``train_kd`` and ``train_kd_shuffled`` of the run's last epoch (None without KD)."""
    with open(run_dir / "history.csv", encoding="utf-8") as f:
        last = list(csv.DictReader(f))[-1]
    if not last.get("train_kd_shuffled"):
        return None
    return {"kd": float(last["train_kd"]), "kd_shuffled": float(last["train_kd_shuffled"])}


def _extra_runs(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """(run name -> distill keyword arguments) of the optional rows."""
    results = report["results"]
    runs: dict[str, dict[str, Any]] = {}
    if args.teacher_linear:  # the paper's extra linear layer, trained jointly on the raw targets
        for kd in ("fitnet", "dc"):
            runs[f"{kd}-raw+linear"] = {"targets": results["dc-raw"]["targets"], "kd": kd,
                                        "teacher_linear": True,
                                        "teacher_linear_dim": args.dim}
    if args.dc_unbiased:
        for label in ("raw", "pca", "learned"):
            runs[f"dc-unbiased-{label}"] = {"targets": results[f"dc-{label}"]["targets"],
                                            "kd": "dc-unbiased"}
    return runs


def main() -> None:
    from eastkd.pipeline.demo.run import DemoOptions, run_demo
    from eastkd.pipeline.distill.train import distill
    from eastkd.pipeline.runs.rundir import is_finished
    from eastkd.pipeline.runs.table import render_text, runs_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo", help="demo folder (rendered and extracted once)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--student", default="vgg")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--teacher-linear", action="store_true",
                    help="also train FitNet and DC with the jointly trained linear layer on the "
                         "raw embeddings (to --dim dims)")
    ap.add_argument("--dc-unbiased", action="store_true",
                    help="also train with the bias-corrected distance correlation on every target")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="tqdm bars (--progress), none (--no-progress); default: bars on a "
                         "terminal, else a plain line every 10 %% or 30 s")
    args = ap.parse_args()

    settings = {f"{args.student}-d{args.dim}-e{args.epochs}-s{seed}" for seed in args.seeds}
    for seed in args.seeds:
        report = run_demo(Path(args.dir), DemoOptions(seed=seed, epochs=args.epochs,
                                                      student=args.student, dim=args.dim,
                                                      progress=args.progress))
        setting = f"{args.student}-d{args.dim}-e{args.epochs}-s{seed}"
        for run, kwargs in _extra_runs(args, report).items():
            run_dir = Path(args.dir) / "runs" / setting / run
            if is_finished(str(run_dir)):
                print(f"  {run:<20} already trained ({run_dir})", flush=True)
                continue
            # an interrupted run in run_dir is continued (same settings)
            result = distill(report["store"], out_dir=str(run_dir), student=args.student,
                             epochs=args.epochs, seed=seed, progress=args.progress, **kwargs)
            print(f"  {run:<20} test accuracy {result.test_metrics['accuracy']:.3f}",
                  flush=True)
    # the table is `eastkd runs` over this invocation's runs: test metrics of each best epoch
    root = Path(args.dir) / "runs"
    table = runs_table(str(root), select=lambda rel: Path(rel).parts[0] in settings)
    metric_name = "accuracy"
    rows = {}
    for s in table.settings:
        if s.get("reference"):  # the probe's own scores, beside the kl-probe students
            rows["probe (reference)"] = {"mean": s[f"test_{metric_name}"]["mean"], "std": 0.0,
                                         "values": [s[f"test_{metric_name}"]["mean"]]}
            continue
        name = Path(s["runs"][0]).name
        values = [r[f"test_{metric_name}"] for r in table.runs if r["run"] in s["runs"]]
        rows[name] = {"mean": s[f"test_{metric_name}"]["mean"],
                      "std": s[f"test_{metric_name}"]["std"], "values": values}
        terms = [t for t in (_kd_terms(root / run) for run in s["runs"]) if t is not None]
        if terms:
            rows[name]["last_epoch_kd"] = terms
    print(json.dumps({"metric": metric_name, "split": "test", "seeds": args.seeds,
                      "epochs": args.epochs, "student": args.student, "dim": args.dim,
                      "rows": rows}, indent=2))
    print()
    print(render_text(table))
    seeds = f"{len(args.seeds)} seed{'s' if len(args.seeds) != 1 else ''}"
    print(f"\n| run | test {metric_name} (mean ± std, {seeds}) "
          f"| KD term, last epoch: paired / shuffled |\n|---|---|---|")
    for run, r in rows.items():
        terms = r.get("last_epoch_kd")
        kd = (" / ".join(f"{statistics.mean(t[k] for t in terms):.3f}"
                         for k in ("kd", "kd_shuffled")) if terms else "—")
        print(f"| {run} | {r['mean']:.3f} ± {r['std']:.3f} | {kd} |")


if __name__ == "__main__":
    main()
