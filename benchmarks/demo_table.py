"""The README's results table: baseline vs FitNet vs DC with raw, PCA and learned targets on the
bundled demo, mean ± std over seeds, evaluated on the demo's test split.

    python benchmarks/demo_table.py [--dir demo] [--seeds 0 1 2] [--epochs 30] [--teacher-linear]

Prints one JSON object (per-run metrics, mean and std per row), the `eastkd runs` table of
these runs and the markdown table; the figures come from `eastkd runs` (each run's
metrics.json: test metrics of its best epoch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from eastkd.pipeline.demo import DemoOptions, run_demo
    from eastkd.pipeline.distill.train import distill
    from eastkd.pipeline.runs import render_text, runs_table

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

    settings = {f"{args.student}-d{args.dim}-e{args.epochs}-s{seed}" for seed in args.seeds}
    for seed in args.seeds:
        report = run_demo(Path(args.dir), DemoOptions(seed=seed, epochs=args.epochs,
                                                      student=args.student, dim=args.dim,
                                                      progress=False))
        if args.teacher_linear:
            # the paper's extra linear layer, trained jointly on the raw embeddings
            setting = f"{args.student}-d{args.dim}-e{args.epochs}-s{seed}"
            raw = report["results"]["dc-raw"]["targets"]
            for kd in ("fitnet", "dc"):
                run_dir = Path(args.dir) / "runs" / setting / f"{kd}-raw+linear"
                if not (run_dir / "metrics.json").exists():
                    distill(report["store"], raw, str(run_dir), kd=kd,
                            teacher_linear=True, teacher_linear_dim=args.dim,
                            student=args.student, epochs=args.epochs, seed=seed,
                            progress=False, resume=(run_dir / "last.pt").exists())
    # the table is `eastkd runs` over this invocation's runs: test metrics of each best epoch
    table = runs_table(str(Path(args.dir) / "runs"),
                       select=lambda rel: Path(rel).parts[0] in settings)
    metric_name = "accuracy"
    rows = {}
    for s in table.settings:
        name = Path(s["runs"][0]).name
        values = [r[f"test_{metric_name}"] for r in table.runs if r["run"] in s["runs"]]
        rows[name] = {"mean": s[f"test_{metric_name}"]["mean"],
                      "std": s[f"test_{metric_name}"]["std"], "values": values}
    print(json.dumps({"metric": metric_name, "split": "test", "seeds": args.seeds,
                      "epochs": args.epochs, "student": args.student, "dim": args.dim,
                      "rows": rows}, indent=2))
    print()
    print(render_text(table))
    print(f"\n| run | test {metric_name} (mean ± std, {len(args.seeds)} seeds) |\n|---|---|")
    for run, r in rows.items():
        print(f"| {run} | {r['mean']:.3f} ± {r['std']:.3f} |")


if __name__ == "__main__":
    main()
