"""``eastkd predict``: labels and scores of a trained student for new audio."""

from __future__ import annotations

import csv
import sys

import click

from eastkd.cli.options import echo_json, progress_option


@click.command("predict", context_settings={"show_default": True})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIO...|MANIFEST")
@click.option("--json", "fmt", flag_value="json", help="Print one JSON list (id, path, labels, "
              "scores per class).")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV: id, path, labels, one score "
              "column per class.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32,
              help="Files per student forward pass.")
@click.option("--device", default="cpu", help="auto, cpu or cuda.")
@progress_option("Accepted for uniformity (predict prints no progress bar).", draws=False)
def command(run_dir: str, inputs: tuple[str, ...], fmt: str | None, batch_size: int,
            device: str, progress: bool | None) -> None:
    """Predict classes for AUDIO files (or the `path` column of a .csv/.jsonl MANIFEST) with
    the best student of RUN_DIR.

    Each file is decoded, mixed to mono, resampled, cut or padded to the run's segment and
    turned into log-mel with the run's recorded settings. Scores are softmax probabilities
    (single-label) or per-class sigmoids (multi-label: classes at 0.5 or above are listed).
    """
    from eastkd.pipeline.runs.predict import predict

    preds = predict(run_dir, list(inputs), device=device, batch_size=batch_size)
    if fmt == "json":
        echo_json([p.as_dict() for p in preds])
    elif fmt == "csv":
        classes = list(preds[0].scores)
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["id", "path", "labels", *classes])
        for p in preds:
            writer.writerow([p.id, p.path, ";".join(p.labels),
                             *(f"{p.scores[c]:.6f}" for c in classes)])
    else:
        width = max(len(p.id) for p in preds)
        for p in preds:
            top = max(p.scores.values())
            click.echo(f"{p.id:<{width}}  {';'.join(p.labels) or '-'}  ({top:.3f})")
