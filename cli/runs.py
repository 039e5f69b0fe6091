"""``eastkd runs``: one table of every distill run under a folder."""

from __future__ import annotations

import click

from eastkd.cli.options import echo_json, progress_option


@click.command("runs", context_settings={"show_default": True})
@click.argument("root", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--json", "fmt", flag_value="json", help="Print one JSON object (settings, runs).")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV (mean and std columns).")
@click.option("--per-run", is_flag=True, help="One row per run instead of per setting.")
@progress_option("Accepted for uniformity (runs prints no progress bar).", draws=False)
def command(root: str, fmt: str | None, per_run: bool, progress: bool | None) -> None:
    """Tabulate every finished run (config.json + metrics.json) under DIR: teacher, targets,
    KD loss, λ, teacher-linear, student, seeds, validation and test metrics, parameters.

    Runs that differ only in --seed form one setting, shown as mean ± std over the seeds
    (sample standard deviation).
    """
    from eastkd.pipeline.runs.table import render_csv, render_text, runs_table

    table = runs_table(root)
    if fmt == "json":
        echo_json(table.as_dict())
    elif fmt == "csv":
        click.echo(render_csv(table, per_run), nl=False)
    else:
        click.echo(render_text(table, per_run))
