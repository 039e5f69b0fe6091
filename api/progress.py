"""Progress of long steps: bars on a terminal, a plain line now and then elsewhere, or nothing.

Every stage takes ``progress: bool | None`` and reports through :func:`progress_bar`:

- ``None`` (auto; the command line's default): tqdm bars when stderr is a terminal; otherwise
  (a redirected log, CI, nohup, a cluster job) a plain line on stderr at every 10 % of a step,
  at most one per :data:`MIN_SECONDS` and at least one per :data:`MAX_SECONDS` while the step
  runs, naming the step, how far it is and the rate, plus one closing line for steps that took
  long enough to print one. No carriage returns, no escape codes: a few lines per minute.
- ``True`` (``--progress``): tqdm bars even without a terminal.
- ``False`` (``--no-progress``; the Python API's default): nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

Progress = bool | None

STEP_FRACTION = 0.10  # a line at every 10 % of the step ...
MIN_SECONDS = 10.0  # ... but at most one per 10 s ...
MAX_SECONDS = 30.0  # ... and at least one per 30 s while the step runs


def draws_bars(progress: Progress, stream: TextIO | None = None) -> bool:
    """Whether ``progress`` means tqdm bars: forced, or auto on a terminal."""
    if progress is None:
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return bool(progress)


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None,
                 desc: str = "", unit: str = "it", progress: Progress = None,
                 initial: float = 0, leave: bool = True, position: int | None = None) -> Any:
    """A tqdm-like object (``update``, ``set_postfix``, ``close``, iteration, ``with``) that
    draws a bar, prints plain lines or stays silent as ``progress`` says (module docstring).
    ``leave=False``: a bar vanishes when done; plain lines get no closing line and come only
    every :data:`MAX_SECONDS` (a step inside another, e.g. an epoch's batches: the outer step
    reports); ``position``: the row of a nested bar."""
    from tqdm.auto import tqdm

    if progress is False:
        return tqdm(iterable, total=total, disable=True)
    if draws_bars(progress):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    position=position)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                         closing_line=leave)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


class PlainProgress:
    """Plain progress lines for a log (see the module docstring for when they are printed)."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None,
                 desc: str = "", unit: str = "it", initial: float = 0,
                 stream: TextIO | None = None, closing_line: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start_n = total, initial, initial
        self.stream, self.clock = stream, clock
        self.started = self.last_time = clock()
        self.last_n, self.lines, self.closed = initial, 0, not closing_line
        # a step inside another (no closing line) speaks only every MAX_SECONDS: a short one
        # stays silent, the outer step reports it
        self.min_seconds = MIN_SECONDS if closing_line else MAX_SECONDS
        self.postfix = ""

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "PlainProgress iterates only over an iterable"
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        since = now - self.last_time
        if self.total:
            stepped = (self.n - self.last_n) >= STEP_FRACTION * self.total
        else:
            stepped = False
        if since >= MAX_SECONDS or (stepped and since >= self.min_seconds):
            if self.total is None or self.n < self.total:
                self._line(self._where(now))
            self.last_time, self.last_n = now, self.n

    def close(self) -> None:
        """One closing line, if the step printed a line or ran for :data:`MIN_SECONDS`."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if self.lines or now - self.started >= MIN_SECONDS:
            self._line(f"done, {self._count()} in {_duration(now - self.started)}"
                       f"{self._rate(now)}")

    def _count(self) -> str:
        n = _number(self.n)
        return f"{n}/{_number(self.total)} {self.unit}" if self.total else f"{n} {self.unit}"

    def _where(self, now: float) -> str:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self._count()}{pct} after {_duration(now - self.started)}{self._rate(now)}"

    def _rate(self, now: float) -> str:
        done, seconds = self.n - self.start_n, now - self.started
        if done <= 0 or seconds <= 0:
            return ""
        rate = done / seconds
        return f", {rate:.1f} {self.unit}/s" if rate >= 1 else f", {1 / rate:.1f} s/{self.unit}"

    def _line(self, text: str) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {text}{post}", file=stream, flush=True)
        self.lines += 1
