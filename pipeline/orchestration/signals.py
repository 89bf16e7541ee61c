"""Stop signals for a worker: the first SIGINT/SIGTERM asks for a drain, a second one ends the process
at once with one line, because someone pressing Ctrl-C twice wants it gone, not a traceback."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Callable


def stop_now(signum: int) -> None:
    """Leave without unwinding: no drain, no traceback, exit status 130 like an interrupted shell job."""
    print(f"specstop: second {signal.Signals(signum).name}: stopping now without draining",
          file=sys.stderr, flush=True)
    os._exit(130)


def on_stop_signals(stop: asyncio.Event) -> None:
    """Set `stop` at the first SIGINT/SIGTERM on the running loop; a second one calls `stop_now`."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            stop_now(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle, sig)


def interrupt_then_stop_now(before_exit: Callable[[], None] = lambda: None) -> None:
    """For a command without an event loop (the broker): the first SIGINT/SIGTERM raises KeyboardInterrupt,
    so its `with` blocks stop what they started; a second one runs `before_exit` (kill what must not
    outlive the process: it may not block or take a lock the interrupted code holds) and calls `stop_now`."""
    seen: list[int] = []

    def handle(signum: int, frame: object) -> None:
        if seen:
            before_exit()
            stop_now(signum)
        seen.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
