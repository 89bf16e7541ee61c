"""Wait for a condition, not for a clock.

A fixed sleep passes on a fast machine and fails (or, worse, proves nothing)
on a slow one. These helpers poll the real condition and fail with a message
that names what was awaited and the last value seen, so a timeout says what
never happened. Timeouts are generous: they only bound a failure, and a
passing test returns as soon as the condition holds.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, Union

DEFAULT_TIMEOUT_S = 20.0

Predicate = Callable[[], Union[Any, Awaitable[Any]]]


class NotReached(AssertionError):
    """A condition a test waited for did not hold before the timeout."""


def _message(what: str, timeout: float, last: Any) -> str:
    return f"not reached within {timeout:g} s: {what} (last value: {last!r})"


async def eventually(
    predicate: Predicate,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `predicate` (sync or async) until it returns a truthy value; return that value.

    Raises NotReached naming `what` and the last value seen when `timeout` passes.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise NotReached(_message(what, timeout, last))
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Synchronous twin of `eventually` for tests outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise NotReached(_message(what, timeout, last))
        time.sleep(interval)
