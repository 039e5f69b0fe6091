"""The README's results table: baseline vs FitNet vs DC with raw, PCA and learned targets on the
bundled demo, mean ± std over seeds, evaluated on the demo's test split.

    python benchmarks/demo_table.py [--dir demo] [--seeds 0 1 2] [--epochs 30] [--teacher-linear]

Prints one JSON object (per-run metrics, mean and std per row) and the markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    from eastkd.pipeline.demo import DemoOptions, run_demo
    from eastkd.pipeline.distill.evaluate import evaluate
    from eastkd.pipeline.distill.train import distill

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="demo", help="demo folder (rendered and extracted once)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--student", default="vgg")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--teacher-linear", action="store_true",
                    help="also train FitNet and DC with the jointly trained linear layer on the "
                         "raw embeddings (to --dim dims)")
    args = ap.parse_args()

    per_run: dict[str, list[float]] = {}
    metric_name = None
    for seed in args.seeds:
        report = run_demo(Path(args.dir), DemoOptions(seed=seed, epochs=args.epochs,
                                                      student=args.student, dim=args.dim,
                                                      progress=False))
        for run, r in report["results"].items():
            metric_name = metric_name or next(iter(r["metrics"]))
            per_run.setdefault(run, []).append(float(r["metrics"][metric_name]))
        if args.teacher_linear:
            # the paper's extra linear layer, trained jointly on the raw embeddings
            setting = f"{args.student}-d{args.dim}-e{args.epochs}-s{seed}"
            raw = report["results"]["dc-raw"]["targets"]
            for kd in ("fitnet", "dc"):
                run = f"{kd}-raw+linear"
                run_dir = Path(args.dir) / "runs" / setting / run
                if not (run_dir / "metrics.json").exists():
                    distill(report["store"], raw, str(run_dir), kd=kd,
                            teacher_linear=True, teacher_linear_dim=args.dim,
                            student=args.student, epochs=args.epochs, seed=seed,
                            progress=False, resume=(run_dir / "last.pt").exists())
                ev = evaluate(str(run_dir), report["store"], split="test")
                per_run.setdefault(run, []).append(float(ev["metrics"][metric_name]))
    rows = {}
    for run, vals in per_run.items():
        rows[run] = {"mean": statistics.mean(vals),
                     "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}
    print(json.dumps({"metric": metric_name, "split": "test", "seeds": args.seeds,
                      "epochs": args.epochs, "student": args.student, "dim": args.dim,
                      "rows": rows}, indent=2))
    print(f"\n| run | test {metric_name} (mean ± std, {len(args.seeds)} seeds) |\n|---|---|")
    for run, r in rows.items():
        print(f"| {run} | {r['mean']:.3f} ± {r['std']:.3f} |")


if __name__ == "__main__":
    main()
