"""Small click helpers shared by the sub-commands."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import click


def parse_key_values(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """``("hop_ms=100", "x=a")`` -> ``{"hop_ms": 100, "x": "a"}`` (JSON values where they parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint=flag)
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def store_access(command: Callable[..., Any] | None = None, *,
                 cache: bool = True) -> Any:
    """Add ``--storage-option KEY=VALUE`` and ``--cache-dir`` (only ``--storage-option`` with
    ``cache=False``) to a command that takes a store, and apply them (to every store URL the
    command opens) before it runs. Use as ``@store_access`` or ``@store_access(cache=False)``."""
    if command is None:
        return functools.partial(store_access, cache=cache)

    @functools.wraps(command)
    def run(*args: Any, storage_options: tuple[str, ...] = (), cache_dir: str | None = None,
            **kwargs: Any) -> Any:
        from eastkd.store import configure_access

        configure_access(parse_key_values(storage_options, "--storage-option"), cache_dir)
        return command(*args, **kwargs)

    if cache:
        run = click.option(
            "--cache-dir", type=click.Path(file_okay=False), default=None,
            help="Local folder caching the chunks read from a store at a URL (reused across "
                 "runs; metadata and progress are always read afresh).")(run)
    return click.option(
        "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
        help="Option for a store at a URL (s3://, gs://, memory://), passed to its fsspec "
             "filesystem, e.g. endpoint_url=http://127.0.0.1:9000 or anon=true (repeatable; "
             "credentials also come from the usual environment variables).")(run)


PROGRESS_AUTO = "auto: bars on a terminal, else a plain line every 10 % or 30 s"


def progress_option(help: str | None = None,
                    draws: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """The shared ``--progress/--no-progress`` flag: None (auto, see eastkd.progress) unless
    given, True forces tqdm bars, False prints no progress. ``help`` replaces the text;
    ``draws=False`` for commands that accept the flag for uniformity only (no default shown)."""
    return click.option(
        "--progress/--no-progress", default=None, show_default=PROGRESS_AUTO if draws else False,
        help=help or "Progress: --progress forces tqdm bars, --no-progress prints none.")


def check_teacher(ctx: click.Context, param: click.Parameter, name: str) -> str:
    """``--teacher`` callback: the name checked before any work (registered teachers or
    python:MODULE:CALLABLE; otherwise a usage error listing them)."""
    from eastkd.errors import EastkdError
    from eastkd.pipeline.teachers.loading import check_teacher_name

    try:
        return check_teacher_name(name)
    except EastkdError as e:
        raise click.BadParameter(str(e)) from None
