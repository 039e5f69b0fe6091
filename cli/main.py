"""The ``eastkd`` command: a click group whose sub-commands live one per module in eastkd.cli.

Sub-command modules are imported only when used (so ``--help`` stays fast), and every
:class:`EastkdError` becomes a one-line message with exit status 1 instead of a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from typing import Any

import click

from eastkd.errors import EastkdError

# command name -> (module, one-line help shown in `eastkd --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("eastkd.cli.demo", "Render the bundled instrument dataset; run every stage on it."),
    "extract": ("eastkd.cli.extract", "Run a teacher once over a dataset into a store."),
    "info": ("eastkd.cli.info", "Show what a store holds: items, teachers, targets, provenance."),
    "probe": ("eastkd.cli.probe", "Linear probe of every teacher and target: worth distilling?"),
    "compress": ("eastkd.cli.compress", "Fit PCA or a learned transformation; write targets."),
    "distill": ("eastkd.cli.distill", "Train a student from the store alone (task + KD loss)."),
    "evaluate": ("eastkd.cli.evaluate", "Evaluate a trained student on a store's split."),
    "verify": ("eastkd.cli.verify", "Read every chunk of a store; report and repair damage."),
    "predict": ("eastkd.cli.predict", "Labels and scores of a trained student for new audio."),
    "export": ("eastkd.cli.export", "Export a student with its front end (TorchScript, ONNX)."),
    "runs": ("eastkd.cli.runs", "One table of every run under a folder (mean ± std over seeds)."),
}


class OneLineUsageError(click.ClickException):
    """A usage error (bad or missing argument or option) printed as one ``Error:`` line."""

    exit_code = 2


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        cmd: click.Command = module.command
        cmd.short_help = COMMANDS[name][1]
        return cmd

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, but an unknown command name that is close to one suggests it."""
        name = args[0] if args else ""
        if name and name not in COMMANDS and not name.startswith("-"):
            close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
            if close:
                ctx.fail(f"No such command {name!r}. Did you mean {close[0]!r}?")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # from the table above, so that `eastkd --help` imports no sub-command module
        with formatter.section("Commands"):
            formatter.write_dl([(name, hlp) for name, (_, hlp) in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EastkdError as e:
            code = getattr(e, "exit_code", 1)  # 130 for RunInterrupted
            from eastkd.store.backends import must_exit_without_flush

            if must_exit_without_flush():
                # a file that cannot be flushed into a full disk crashes at exit: skip that
                click.echo(f"Error: {e}", err=True)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            exc = click.ClickException(str(e))
            exc.exit_code = code
            raise exc from None
        except click.UsageError as e:
            # click prints usage + hint + error on three lines; the project's form is one line
            cmd = f"eastkd {e.ctx.info_name}" if e.ctx and e.ctx.parent else "eastkd"
            raise OneLineUsageError(f"{e.format_message()} (see `{cmd} --help`)") from None
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is kept: rerun the same command to continue",
                       err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "show_default": True})
@click.version_option(package_name="eastkd")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """eastkd: an offline embedding cache and feature store for teacher-to-student knowledge
    transfer in audio.

    \b
    1. extract   run the teacher once, cache embeddings + student log-mel in a store
       probe     a linear probe on the stored embeddings: does the teacher know the task?
    2. compress  fit PCA / a learned teacher transformation, write compact targets
    3. distill   train a small student from the store alone (the teacher never runs)
    4. evaluate  score a trained student on any store with matching inputs

    Then: predict (new audio), export (TorchScript/ONNX), runs (a table over runs).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="eastkd")


if __name__ == "__main__":
    main()
