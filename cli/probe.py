"""``eastkd probe``: a linear probe on each stored teacher representation, in seconds."""

from __future__ import annotations

import click

from eastkd.cli.options import echo_json, store_access


@click.command("probe", context_settings={"show_default": True})
@click.argument("store")
@click.option("--embeddings", "embeddings", multiple=True, metavar="KEY",
              help="Embeddings to probe (repeatable).  [default: every embeddings key and "
                   "every target, when neither --embeddings nor --targets is given]")
@click.option("--targets", "targets", multiple=True, metavar="NAME",
              help="Targets (written by `eastkd compress`) to probe (repeatable).")
@click.option("--labels-per-class", type=click.IntRange(min=1), default=None, metavar="K",
              help="Fit on K labelled train items per class, drawn per seed (multi-label: K "
                   "positives per tag at least).  [default: every labelled train item]")
@click.option("--seeds", type=click.IntRange(min=1), default=1, metavar="N",
              help="Draws of --labels-per-class (seeds 0..N-1); metrics are mean ± sample std. "
                   "Without --labels-per-class the probe is deterministic: one fit.")
@click.option("--fold", type=click.IntRange(1, 5), default=None,
              help="Test fold K of a store with an items 'fold' column (ESC-50): the splits of "
                   "`distill --fold K`.  [default: the stored split]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--progress/--no-progress", default=True,
              help="Accepted for uniformity (probe prints no progress bar).")
@store_access
def command(store: str, embeddings: tuple[str, ...], targets: tuple[str, ...],
            labels_per_class: int | None, seeds: int, fold: int | None, as_json: bool,
            progress: bool) -> None:
    """Fit a linear probe (standardised features, logistic regression; one-vs-rest scored by
    mAP for multi-label data; C chosen on the valid split) on STORE's embeddings and targets,
    and report valid and test metrics as `eastkd evaluate` defines them: the score a student
    distilled from them has to beat.

    \b
    Examples:
      eastkd probe demo.zarr
      eastkd probe demo.zarr --embeddings crepe-tiny --labels-per-class 5 --seeds 5
      eastkd probe esc50.zarr --fold 3 --json
    """
    from eastkd.pipeline.probe.run import probe, render_text

    report = probe(store, list(embeddings) or None, list(targets) or None, labels_per_class,
                   seeds, fold)
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(render_text(report))
