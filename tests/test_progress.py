"""Progress output: bars only on a terminal, a few plain lines per minute in a log."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eastkd.progress import MAX_SECONDS, PlainProgress, draws_bars, progress_bar

ESCAPES = re.compile(r"[\r\x1b]")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _simulate(total: int | None, seconds: float, step: float = 0.1) -> list[str]:
    """A step of ``seconds`` of work updated every ``step`` seconds; the lines it prints."""
    out, clock = io.StringIO(), FakeClock()
    bar = PlainProgress(total=total, desc="extract crepe-tiny", unit="clip", stream=out,
                        clock=clock)
    for _ in range(round(seconds / step)):
        clock.now += step
        bar.update(1)
    bar.close()
    return out.getvalue().splitlines()


@pytest.mark.parametrize("total", [6000, None])
def test_plain_lines_are_a_few_per_minute(total: int | None) -> None:
    lines = _simulate(total, seconds=600.0)  # ten minutes of work
    assert 3 <= len(lines) <= 3 * 10 + 1, lines
    assert all(line.startswith("extract crepe-tiny: ") for line in lines)
    assert not any(ESCAPES.search(line) for line in lines)
    # what, how far and the rate
    assert re.search(r": \d+/6000 clip \(\d+%\) after .*s, 10\.0 clip/s", lines[0]) \
        if total else re.search(r": \d+ clip after \d+ s, 10\.0 clip/s", lines[0])
    assert lines[-1].startswith("extract crepe-tiny: done, 6000") and "10 min 00 s" in lines[-1]


def test_a_long_step_reports_at_least_every_max_seconds() -> None:
    lines = _simulate(1_000_000, seconds=10 * MAX_SECONDS)  # never reaches 10 %
    assert 10 <= len(lines) <= 10 + 1


def test_an_inner_step_speaks_only_every_max_seconds() -> None:
    """An epoch's batches (no closing line): a 15 s epoch prints nothing, a 95 s one three
    lines, so the log is the outer step's."""
    for seconds, lines in ((15.0, 0), (95.0, 3)):
        out, clock = io.StringIO(), FakeClock()
        bar = PlainProgress(total=round(seconds / 0.5), desc="epoch 3/30", unit="batch",
                            stream=out, clock=clock, closing_line=False)
        for _ in range(round(seconds / 0.5)):
            clock.now += 0.5
            bar.update(1)
        bar.close()
        assert len(out.getvalue().splitlines()) == lines, out.getvalue()


def test_short_steps_print_nothing() -> None:
    assert _simulate(50, seconds=5.0) == []


def test_slow_units_give_seconds_per_unit() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = PlainProgress(range(3), desc="distill vgg", unit="epoch", stream=out, clock=clock)
    for _ in bar:
        clock.now += 20.0
    assert out.getvalue().splitlines()[-1] == "distill vgg: done, 3/3 epoch in 1 min 00 s, " \
                                              "20.0 s/epoch"


def test_bars_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert draws_bars(None, Tty()) and not draws_bars(None, io.StringIO())
    assert draws_bars(True, io.StringIO()) and not draws_bars(False, Tty())
    # pytest's captured stderr is no terminal: auto gives plain lines, False nothing
    assert isinstance(progress_bar(total=3, progress=None), PlainProgress)
    with progress_bar(range(3), progress=False) as bar:
        assert list(bar) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_the_demo_redirected_leaves_a_readable_log(tmp_path: Path) -> None:
    """``eastkd demo`` (a small one) with stdout and stderr redirected to a file: a short log
    of plain lines, each student's result on its own line."""
    log = tmp_path / "demo.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "eastkd.cli.main", "demo", str(tmp_path / "demo"),
             "--teacher", "crepe-tiny", "--teacher-opt", "hop_ms=100", "--sample-rate", "16000",
             "--family", "piano", "--family", "brass", "--family", "flute",
             "--clips-per-class", "6", "--seconds", "1.0", "--labels-per-class", "2",
             "--epochs", "1", "--dim", "2"],
            stdout=f, stderr=subprocess.STDOUT, timeout=900)
    minutes = (time.perf_counter() - t0) / 60
    text = log.read_text()
    assert proc.returncode == 0, text
    assert not ESCAPES.search(text), text[:2000]
    lines = text.splitlines()
    assert len(lines) <= 30 + 4 * minutes, text
    for run in ("baseline", "kl-probe", "fitnet-pca"):
        done = rf"  {run} +test accuracy \d\.\d\d\d \(\d+ s\)$"  # "... 0.536 (50 s)"
        assert sum(re.match(done, line) is not None for line in lines) == 1, text
