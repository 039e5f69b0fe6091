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
    rate = f"{s.clips_per_second:.1f} clips/s" if s.written else "nothing to do"
    click.echo(
        f"extract {s.teacher} -> {s.store} [{s.key}]: {s.written} written, "
        f"{s.skipped_now} skipped now, {s.already_done} already done, of {s.items} items "
        f"in {s.seconds:.1f} s ({rate}; {s.audio_seconds / max(s.seconds, 1e-9):.1f} audio s/s; "
        f"teacher forward {s.forward_seconds:.1f} s)"
    )
    if s.skipped:
        click.echo(f"{len(s.skipped)} item(s) skipped in total (see `eastkd info`):")
        for item_id, reason in s.skipped[:10]:
            click.echo(f"  {item_id}: {reason}")
        if len(s.skipped) > 10:
            click.echo(f"  ... and {len(s.skipped) - 10} more")
