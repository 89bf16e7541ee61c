"""One way to run a coroutine as a process's main: uvloop where it is installed.

uvloop's libuv loop cut the median per-round overhead of the pipeline from
~1.4 to ~1.2 ms at zero delay (measured with `specstop bench pipeline`, both
loops in one session); everything falls back to the standard asyncio loop
where uvloop is not available (Windows) or `SPECSTOP_LOOP=asyncio` is set.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    if os.environ.get("SPECSTOP_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
