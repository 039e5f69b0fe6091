"""``eastkd demo``: the bundled default, end to end on real audio with a real teacher."""

from __future__ import annotations

import click

from eastkd.cli.options import check_teacher, parse_key_values, progress_option


@click.command("demo", context_settings={"show_default": True})
@click.argument("out_dir", default="demo", type=click.Path(file_okay=False))
@click.option("--teacher", "-t", default="crepe-tiny", callback=check_teacher,
              help="Teacher to extract (crepe-tiny runs in about a minute on 2 CPU cores; "
                   "crepe (full, 22 M parameters) takes far longer without a GPU).")
@click.option("--teacher-opt", "teacher_opts", multiple=True, metavar="KEY=VALUE",
              default=("hop_ms=50",), help="Teacher options (repeatable).")
@click.option("--clips-per-class", type=click.IntRange(min=3), default=60,
              help="Clips rendered per instrument family (5 families).")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=2.0, help="Clip length.")
@click.option("--dim", type=click.IntRange(min=1), default=32, help="Compressed target size.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, help="Student epochs per run.")
@click.option("--student", default="vgg", help="Student architecture (vgg, mobilenet).")
@click.option("--seed", type=int, default=0,
              help="Seed for fitting and training (the audio is always rendered with seed 0).")
@click.option("--device", default="auto", help="auto, cpu or cuda.")
@click.option("--backend", type=click.Choice(["zarr", "hdf5"]), default="zarr",
              help="Store backend.")
@progress_option()
def command(out_dir: str, teacher: str, teacher_opts: tuple[str, ...], clips_per_class: int,
            seconds: float, dim: int, epochs: int, student: str, seed: int, device: str,
            backend: str, progress: bool | None) -> None:
    """Render a real instrument-family dataset (GM SoundFont bundled with pretty_midi) into
    OUT_DIR and run extract -> compress (PCA, learned) -> distill (baseline, FitNet, DC) ->
    evaluate on it. Rerunning skips finished work.
    """
    from eastkd.pipeline.demo.run import DemoOptions, run_demo

    run_demo(out_dir, DemoOptions(
        teacher=teacher, teacher_options=parse_key_values(teacher_opts, "--teacher-opt"),
        clips_per_class=clips_per_class, seconds=seconds, dim=dim, epochs=epochs,
        student=student, seed=seed, device=device, backend=backend, progress=progress),
        say=click.echo)
