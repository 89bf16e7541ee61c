"""Progress of a long command on stderr: a rich bar on a terminal, otherwise one plain line every few
seconds (SPECSTOP_PROGRESS_EVERY_S, default 5), so a log or CI shows that a run is alive without a
line per step. stdout is never touched: --json output stays clean."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

DEFAULT_EVERY_S = 5.0


def every_s() -> float:
    """The plain line's period; a bad value falls back to the default rather than failing a long run."""
    try:
        value = float(os.environ.get("SPECSTOP_PROGRESS_EVERY_S", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value >= 0 else DEFAULT_EVERY_S


class PlainProgress:
    """`what: done/total` on `stream` at most once per `every` seconds (and never for a run shorter)."""

    def __init__(self, what: str, total: int | None, stream: TextIO | None = None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.done = what, total, 0
        self.stream = stream or sys.stderr
        self.every = every_s() if every is None else every
        self.clock = clock
        self.last = clock()

    def advance(self, *_: object) -> None:
        self.done += 1
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        if self.total:
            return f"{self.what}: {self.done}/{self.total} ({100 * self.done // self.total}%)"
        return f"{self.what}: {self.done}"

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def start(what: str, total: int | None = None):
    """(context manager, advance callback): a rich bar on a terminal, else plain periodic lines."""
    if sys.stderr.isatty():
        from rich.console import Console  # rich costs ~60 ms to import: only when a bar shows
        from rich.progress import Progress

        # rich's default console is stdout: the bar would land in --json output; stdout is left alone
        bar = Progress(transient=True, console=Console(stderr=True), redirect_stdout=False)
        task = bar.add_task(what, total=total)
        return bar, (lambda *_: bar.advance(task))
    plain = PlainProgress(what, total)
    return plain, plain.advance
