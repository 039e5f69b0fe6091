"""``eastkd verify``: read every chunk of a store, report damage, optionally repair it."""

from __future__ import annotations

import click

from eastkd.cli.options import store_access, progress_option


def _print_text(report) -> None:  # noqa: ANN001 (VerifyReport; imported lazily)
    from eastkd.cli.report import human_bytes

    mb_s = report.bytes_on_disk / max(report.seconds, 1e-9) / 1e6
    click.echo(f"{report.store}  ({report.backend}, format v{report.format_version}, "
               f"{report.items} items, {report.arrays} arrays, {report.chunks} chunks, "
               f"{human_bytes(report.bytes_on_disk)} on disk in {report.seconds:.1f} s, "
               f"{mb_s:.0f} MB/s)")
    click.echo(f"  digest  {report.digest or report.digest_note}")
    for f in report.findings:
        click.echo(f"  {'DAMAGED' if f.damage else 'note'}  {f.line()}")
    for section, rows in report.repaired.items():
        click.echo(f"  repaired  {section}: {rows} rows marked pending")
    if report.damaged and report.repaired:
        click.echo("rerun to recompute the repaired rows (finished rows are kept):")
    elif report.damaged and report.rerun and report.store.endswith(".zip"):
        click.echo("zipped stores are read-only: unzip it to a .zarr folder, repair that with "
                   "`eastkd verify FOLDER --repair`, then rerun:")
    elif report.damaged and report.rerun:
        click.echo(f"repair with `eastkd verify {report.store} --repair`, then rerun:")
    commands = list(dict.fromkeys(r.command() for r in report.rerun))
    if report.damaged or report.repaired:
        for cmd in commands:
            click.echo(f"  {cmd}")
    if not report.damaged:
        click.echo("ok: every chunk read back and matched its checksum"
                   + (" and its recorded content digest" if report.digest_checked else ""))
        if commands:
            click.echo("unfinished sections continue with:")
            for cmd in commands:
                click.echo(f"  {cmd}")


@click.command("verify", context_settings={"show_default": True})
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--repair", is_flag=True,
              help="Mark the rows of damaged or missing chunks pending (and drop the damaged "
                   "chunks), so the extract or compress command that wrote them recomputes "
                   "exactly those rows.")
@click.option("--deep", is_flag=True,
              help="Also decode every data chunk (slower), hash it and compare it with the "
                   "content digest recorded when it was written (catches a chunk rewritten "
                   "with a valid checksum); computes the digest of a store written before "
                   "digests were recorded. By default data chunks are checked on their raw "
                   "bytes (Zarr: crc32c; HDF5: fletcher32), at the speed of reading them.")
@click.option("--digest", "expected_digest", metavar="DIGEST|FILE", default=None,
              help="Check that the store digest computed from the content is DIGEST (as "
                   "`eastkd info` prints it: eastkd:sha256:...), or the `digest` in FILE (the "
                   "--json output of info or verify, which also names differing sections). "
                   "Decodes and hashes every chunk, as --deep.")
@progress_option()
@store_access(cache=False)
def command(store: str, as_json: bool, repair: bool, deep: bool, expected_digest: str | None,
            progress: bool | None) -> None:
    """Read every chunk of STORE and check it: checksums, chunks missing where rows are marked
    done, shapes, the items table and provenance (dataset fingerprints); with --deep or
    --digest also the content digests (the sha256 of every data chunk's decoded rows, recorded
    when it was written), and the store digest computed from the content.

    Exits with status 1 when damage was found (also after --repair: the repaired rows still
    have to be recomputed by rerunning the command that wrote them), 0 when the store is sound.

    \b
    Examples:
      eastkd verify received.zarr
      eastkd verify received.zarr --digest eastkd:sha256:3f5a...
      eastkd verify received.zarr --repair; eastkd extract DATASET received.zarr ...
      eastkd verify s3://bucket/shared.zarr --storage-option endpoint_url=http://host:9000
    """
    from eastkd.cli.options import echo_json
    from eastkd.store.verify import verify

    report = verify(store, repair=repair, progress=False if as_json else progress, deep=deep,
                    expected_digest=expected_digest)
    if as_json:
        echo_json(report.as_dict())
    else:
        _print_text(report)
    if report.damaged:
        raise SystemExit(1)
