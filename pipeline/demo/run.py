"""The bundled default: a label-scarce instrument task, a teacher that knows it, and its students.

``eastkd demo DIR`` renders General MIDI instrument families from the SoundFont inside
``pretty_midi`` (44.1 kHz, the rate of the default teacher), keeps the labels of only a few
training clips per class (the other training clips stay as unlabelled rows; they are left out
with ``unlabelled=False``), extracts the teacher that knows the task (``aisfx``, a general
sound-effects model whose weights ship in the ``aisfx`` wheel), prints the teacher's linear
probe on those labels (the reference any distilled student is measured against), compresses
the embeddings (the probe's soft labels, PCA) and trains students from the store alone: the
task-only baseline on the labelled clips, and the distilled students, whose KD loss also covers
the unlabelled clips; each is evaluated on the test split. Every stage skips work already done,
so rerunning is cheap.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eastkd.pipeline.demo.data import render_demo_dataset, scarce_manifest
from eastkd.pipeline.extract import ExtractOptions, extract
from eastkd.pipeline.runs.rundir import is_finished
from eastkd.pipeline.teachers.loading import check_teacher_name
from eastkd.progress import Progress

#: The demo's instrument families: seven, so that a few labels per class leave the student
#: plenty to learn from the teacher.
DEMO_FAMILIES: tuple[str, ...] = ("piano", "guitar", "strings", "brass", "reed", "flute", "organ")

Say = Callable[[str], None]


def _say_now(line: str) -> None:
    print(line, flush=True)  # a redirected stdout is block-buffered: show each line at once


@dataclass
class DemoOptions:
    """Every option of the demo. ``labels_per_class`` None keeps every training label; with K,
    the other training clips are left out, or kept as unlabelled rows with ``unlabelled``."""

    teacher: str = "aisfx"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    families: tuple[str, ...] = DEMO_FAMILIES
    clips_per_class: int = 80
    seconds: float = 2.0
    sample_rate: int = 44100
    labels_per_class: int | None = 10
    unlabelled: bool = True  # keep the other training clips as unlabelled rows (KD only)
    dim: int = 32
    epochs: int = 30
    student: str = "vgg"
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    backend: str = "zarr"
    progress: Progress = False  # None: bars on a terminal, plain lines elsewhere (the CLI's)

    @property
    def labels(self) -> str:
        """``all`` for every training label; ``k<K>`` for K labels per class and the other
        training clips unlabelled, ``k<K>-labelled`` without them."""
        if self.labels_per_class is None:
            return "all"
        return f"k{self.labels_per_class}" + ("" if self.unlabelled else "-labelled")

    @property
    def setting(self) -> str:
        """The runs folder of these options (a rerun with others never reuses their runs)."""
        return f"{self.labels}-{self.student}-d{self.dim}-e{self.epochs}-s{self.seed}"


@dataclass(frozen=True)
class StudentRun:
    """One student of the demo's table: its run name, KD loss and targets."""

    name: str
    kd: str
    targets: str | None


def student_runs(targets: dict[str, str]) -> list[StudentRun]:
    """The demo's students: the task-only baseline (its task loss sees the labelled rows
    only), KL towards the probe's soft labels (response-based KD) and FitNet towards the PCA
    targets (feature KD). The KD students take their KD loss on the labelled and, where the
    store keeps them, the unlabelled rows (distill's default: one unlabelled row per labelled
    row in a step, an epoch one pass over all of them)."""
    return [StudentRun("baseline", "none", None),
            StudentRun("kl-probe", "kl", targets["probe"]),
            StudentRun("fitnet-pca", "fitnet", targets["pca"])]


def _render(out: Path, opts: DemoOptions, say: Say) -> Path:
    """Render the clips; return the manifest the store is built from (label-scarce or not)."""
    say(f"[1/5] rendering {opts.clips_per_class} clips x {len(opts.families)} families "
        f"({', '.join(opts.families)}) at {opts.sample_rate} Hz into {out / 'data'}")
    manifest = render_demo_dataset(out / "data", clips_per_class=opts.clips_per_class,
                                   seconds=opts.seconds, sample_rate=opts.sample_rate,
                                   seed=opts.data_seed, families=list(opts.families),
                                   progress=opts.progress)
    if opts.labels_per_class is None:
        return manifest
    scarce = scarce_manifest(manifest, opts.labels_per_class, seed=opts.data_seed,
                             unlabelled=opts.unlabelled)
    rest = ("kept as unlabelled rows (KD targets only)" if opts.unlabelled else "left out")
    say(f"  keeping the labels of {opts.labels_per_class} training clips per class "
        f"({scarce.name}); the other training clips are {rest}; valid and test keep theirs")
    return scarce


def _store_path(out: Path, opts: DemoOptions) -> str:
    return str(out / f"store-{opts.labels}.{'zarr' if opts.backend == 'zarr' else 'h5'}")


def probe_scores(store: str, key: str) -> dict[str, float]:
    """Valid and test accuracy of the teacher's linear probe (``eastkd probe``) on the store's
    labelled train rows: standardised clip embeddings, logistic regression, C chosen on valid."""
    from eastkd.pipeline.probe.run import probe

    found = probe(store, embeddings=[key], targets=[]).probes[0]
    return {split: found[split]["accuracy"]["mean"] for split in ("valid", "test")}


def _compress(store: str, key: str, opts: DemoOptions, say: Say) -> dict[str, str]:
    """Fit the probe's soft labels and the PCA targets; return {label: targets name}."""
    from eastkd.pipeline.compress.run import compress

    say(f"[3/5] compressing {key}: the probe's class probabilities for every training clip "
        f"(soft labels), and PCA to {opts.dim} dims")
    names = {"probe": f"{key}-probe", "pca": f"{key}-pca{opts.dim}"}
    for method, name in names.items():
        res = compress(store, key, method, None if method == "probe" else opts.dim, name,
                       seed=opts.seed, progress=opts.progress)
        quality = (f"explained variance {res.explained_variance:.3f}"
                   if res.explained_variance is not None
                   else f"probe valid {res.metric} {res.metric_value:.3f}")
        say(f"  {name}: {res.input_dim} -> {res.output_dim} dims, {quality}"
            f"{' (reused)' if res.reused else ''}")
    return names


def _train(store: str, run: StudentRun, run_dir: Path, opts: DemoOptions, say: Say) -> None:
    """Train one student unless its run folder holds a finished run (distill continues an
    interrupted one with the same settings)."""
    from eastkd.pipeline.distill.train import distill

    if is_finished(str(run_dir)):
        say(f"  {run.name:<16} already trained ({run_dir})")
        return
    distill(store, run.targets, str(run_dir), student=opts.student, kd=run.kd,
            epochs=opts.epochs, seed=opts.seed, device=opts.device, progress=opts.progress)


def _students(store: str, runs: list[StudentRun], out: Path, opts: DemoOptions,
              say: Say) -> dict[str, Any]:
    """Train and evaluate every student on the test split, reporting each as it finishes."""
    from eastkd.pipeline.distill.evaluate import evaluate

    results: dict[str, Any] = {}
    for run in runs:
        run_dir = out / "runs" / opts.setting / run.name
        t0 = time.perf_counter()
        _train(store, run, run_dir, opts, say)
        ev = evaluate(str(run_dir), store, split="test")
        results[run.name] = {"kd": run.kd, "targets": run.targets, "metrics": ev["metrics"]}
        metric, value = next(iter(ev["metrics"].items()))
        say(f"  {run.name:<16} test {metric} {value:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return results


def run_demo(out_dir: str | Path, opts: DemoOptions, say: Say = _say_now) -> dict[str, Any]:
    """Run the whole pipeline under ``out_dir``; returns (and writes) a summary. Each step
    and each student's result, as it finishes, is reported through ``say`` (one line each);
    the stages' progress follows ``opts.progress`` (see :mod:`eastkd.progress`)."""
    check_teacher_name(opts.teacher)  # before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = _render(out, opts, say)
    store = _store_path(out, opts)

    say(f"[2/5] extracting teacher {opts.teacher} into {store}")
    summary = extract(str(manifest), store, ExtractOptions(
        teacher=opts.teacher, teacher_options=dict(opts.teacher_options), device=opts.device,
        progress=opts.progress))
    for line in summary.lines():
        say(line)
    key = summary.key

    probe = probe_scores(store, key)
    say(f"  probe (teacher's linear classifier on the same labels): valid accuracy "
        f"{probe['valid']:.3f}, test accuracy {probe['test']:.3f}")
    targets = _compress(store, key, opts, say)

    kd_pool = ("; a KD student's epoch also passes over the unlabelled clips, so it takes "
               "several times the baseline's" if opts.unlabelled and opts.labels_per_class
               else "")
    say(f"[4/5] distilling {opts.student} students ({opts.epochs} epochs each{kd_pool})")
    results = _students(store, student_runs(targets), out, opts, say)
    report = {"store": store, "teacher": opts.teacher, "families": list(opts.families),
              "labels_per_class": opts.labels_per_class, "unlabelled": opts.unlabelled,
              "dim": opts.dim,
              "student": opts.student, "epochs": opts.epochs, "seed": opts.seed,
              "setting": opts.setting, "probe": probe, "results": results,
              "seconds": round(time.perf_counter() - t0, 1)}
    path = out / f"results-{Path(store).stem}-s{opts.seed}.json"
    path.write_text(json.dumps(report, indent=2))
    say(f"[5/5] done in {report['seconds']:.0f} s; results in {path}, training curves in "
        f"{out / 'runs' / opts.setting}/*/curves.png")
    return report
