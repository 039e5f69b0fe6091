"""``eastkd demo``: the bundled default, end to end on real audio with a real teacher."""

from __future__ import annotations

import click

from eastkd.cli.options import check_teacher, parse_key_values, progress_option
from eastkd.pipeline.demo.data import FAMILIES
from eastkd.pipeline.demo.run import DemoOptions

_D = DemoOptions()


@click.command("demo", context_settings={"show_default": True})
@click.argument("out_dir", default="demo", type=click.Path(file_okay=False))
@click.option("--teacher", "-t", default=_D.teacher, callback=check_teacher,
              help="Teacher to extract: aisfx (sound effects, knows instrument timbre; about "
                   "a minute on 2 idle CPU cores), or e.g. crepe-tiny (a pitch tracker, with "
                   "--teacher-opt hop_ms=50 --sample-rate 16000: the earlier demo, where KD "
                   "does not help).")
@click.option("--teacher-opt", "teacher_opts", multiple=True, metavar="KEY=VALUE",
              help="Teacher options (repeatable).")
@click.option("--family", "families", multiple=True, type=click.Choice(list(FAMILIES)),
              default=_D.families, help="Instrument families to render (repeatable).")
@click.option("--clips-per-class", type=click.IntRange(min=3), default=_D.clips_per_class,
              help="Clips rendered per family (split 70/15/15 train/valid/test).")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=_D.seconds,
              help="Clip length.")
@click.option("--sample-rate", type=click.IntRange(min=8000), default=_D.sample_rate,
              help="Rate the clips are rendered at (aisfx runs at 44100 Hz).")
@click.option("--labels-per-class", type=click.IntRange(min=0), default=_D.labels_per_class,
              help="Training clips per class that keep their label (0: all of them); valid "
                   "and test keep theirs.")
@click.option("--unlabelled/--labelled-only", default=_D.unlabelled,
              help="Keep the other training clips as unlabelled rows (the KD losses use them, "
                   "the task loss does not), or leave them out (faster: KD then learns from "
                   "the labelled clips only).")
@click.option("--dim", type=click.IntRange(min=1), default=_D.dim,
              help="PCA target size.")
@click.option("--epochs", type=click.IntRange(min=1), default=_D.epochs,
              help="Student epochs per run.")
@click.option("--student", default=_D.student, help="Student architecture (vgg, mobilenet).")
@click.option("--seed", type=int, default=_D.seed,
              help="Seed for fitting and training (the audio and the kept labels always use "
                   "seed 0).")
@click.option("--device", default=_D.device, help="auto, cpu or cuda.")
@click.option("--backend", type=click.Choice(["zarr", "hdf5"]), default=_D.backend,
              help="Store backend.")
@progress_option()
def command(out_dir: str, teacher: str, teacher_opts: tuple[str, ...],
            families: tuple[str, ...], clips_per_class: int, seconds: float, sample_rate: int,
            labels_per_class: int, unlabelled: bool, dim: int, epochs: int, student: str,
            seed: int, device: str, backend: str, progress: bool | None) -> None:
    """Render a real instrument-family dataset (GM SoundFont bundled with pretty_midi) into
    OUT_DIR, keep a few labels per class (the other training clips stay as unlabelled rows), and
    run extract -> probe (the teacher's linear classifier on those labels) -> compress (the
    probe's soft labels, PCA) -> distill (the task-only baseline on the labelled clips; KL on the
    soft labels and FitNet on PCA, each also learning from the unlabelled clips) -> evaluate on
    the test split. Rerunning skips finished work.
    """
    from eastkd.pipeline.demo.run import run_demo

    run_demo(out_dir, DemoOptions(
        teacher=teacher, teacher_options=parse_key_values(teacher_opts, "--teacher-opt"),
        families=tuple(families), clips_per_class=clips_per_class, seconds=seconds,
        sample_rate=sample_rate, labels_per_class=labels_per_class or None,
        unlabelled=unlabelled, dim=dim,
        epochs=epochs, student=student, seed=seed, device=device, backend=backend,
        progress=progress), say=click.echo)
