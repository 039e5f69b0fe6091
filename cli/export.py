"""``eastkd export``: a trained student as one self-contained TorchScript or ONNX file."""

from __future__ import annotations

import click

from eastkd.cli.options import progress_option


@click.command("export", context_settings={"show_default": True})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]),
              default="torchscript", help="File format of the exported model.")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Output file  [default: RUN_DIR/student.pt or RUN_DIR/student.onnx]")
@progress_option("Accepted for uniformity (export prints no progress bar).", draws=False)
def command(run_dir: str, fmt: str, out: str | None, progress: bool | None) -> None:
    """Export the best student of RUN_DIR with its log-mel front end and class names.

    \b
    Input:  float32 (batch, n_samples) mono waveform at the run's student sample rate,
            cut or zero-padded to the run's segment (n_samples is in the metadata).
    Output: (batch, classes) probabilities (softmax; sigmoid per class if multi-label).
    Metadata (class names, sample rate, n_samples, log-mel settings): TorchScript extra file
    eastkd.json (torch.jit.load(path, _extra_files={"eastkd.json": ""})), ONNX metadata key
    "eastkd". Needs only torch, or onnxruntime, to run.
    """
    from eastkd.pipeline.runs.export import export

    path = export(run_dir, fmt, out)
    click.echo(f"export {fmt} -> {path}")
