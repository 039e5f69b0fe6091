"""Human-readable summaries printed at the end of each stage."""

from __future__ import annotations

import click

from eastkd.pipeline.extract import ExtractSummary


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def print_extract_summary(s: ExtractSummary) -> None:
    for line in s.lines():
        click.echo(line)
