"""The command line's small courtesies: command suggestions, teacher names checked before any
work, teacher options in `info`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from eastkd.cli.main import cli
from eastkd.errors import EastkdError


@pytest.mark.parametrize("typo, want", [("extrct", "extract"), ("evalute", "evaluate"),
                                         ("comprss", "compress"), ("distil", "distill")])
def test_a_mistyped_command_suggests_the_right_one(typo: str, want: str) -> None:
    res = CliRunner().invoke(cli, [typo])
    assert res.exit_code == 2
    assert res.output == (f"Error: No such command {typo!r}. Did you mean {want!r}? "
                          "(see `eastkd --help`)\n")


def test_an_unrelated_command_suggests_nothing() -> None:
    res = CliRunner().invoke(cli, ["xyz"])
    assert res.exit_code == 2 and "Did you mean" not in res.output


@pytest.mark.parametrize("command", ["extract", "demo"])
def test_an_unknown_teacher_is_refused_before_any_work(command: str, demo_manifest: Path,
                                                       tmp_path: Path) -> None:
    args = ([command, str(demo_manifest), str(tmp_path / "s.zarr")] if command == "extract"
            else [command, str(tmp_path / "demo")])
    res = CliRunner().invoke(cli, [*args, "--teacher", "crepe-tinny"])
    assert res.exit_code == 2
    lines = res.output.splitlines()
    assert len(lines) == 1 and "split:" not in res.output, res.output  # nothing ran before
    assert "unknown teacher 'crepe-tinny'; choose one of: " in lines[0]
    assert ", crepe-tiny, " in lines[0] and ", or python:MODULE:CALLABLE for your own " in lines[0]
    assert not any(tmp_path.iterdir())


def test_the_api_checks_the_teacher_before_any_work(demo_manifest: Path, tmp_path: Path) -> None:
    from eastkd.pipeline.extract import ExtractOptions, extract

    for name, msg in (("nope", "unknown teacher 'nope'.*python:MODULE:CALLABLE"),
                      ("python:mod", "expected python:MODULE:CALLABLE")):
        with pytest.raises(EastkdError, match=msg):
            extract(str(demo_manifest), str(tmp_path / "s.zarr"), ExtractOptions(teacher=name))
    assert not any(tmp_path.iterdir())


def test_info_shows_the_teacher_options(demo_store: Path) -> None:
    res = CliRunner().invoke(cli, ["info", str(demo_store)])
    assert res.exit_code == 0, res.output
    line = next(line for line in res.output.splitlines() if "teacher=crepe-tiny (" in line)
    assert " hop_ms=100.0 " in line  # the options the teacher ran with, defaults included
