"""NATS connection helper: probe fast, then connect for the long haul.

A short probe turns "no broker there" into one clear error; long-lived workers
then connect with endless reconnects (nats-py: max_reconnect_attempts <= 0
never gives up) and report nats-py's own errors as JSON log events.
"""
from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.aio.client import Client

from pipeline.errors import PipelineError


async def probe(url: str, timeout: float = 1.0) -> None:
    try:
        nc = await asyncio.wait_for(
            nats.connect(url, max_reconnect_attempts=1, reconnect_time_wait=0, connect_timeout=timeout,
                         allow_reconnect=False, error_cb=_silent),
            timeout=timeout + 1.0)
    except Exception as exc:  # nats raises OSError, TimeoutError, NoServersError...
        raise PipelineError(f"cannot reach a NATS broker at {url} ({type(exc).__name__}); "
                            "start one with `specstop broker` or pass --nats / SPECSTOP_NATS_URL") from None
    await nc.close()


async def _silent(exc: Exception) -> None:
    return None


async def connect(url: str, name: str, log: Any = None, long_lived: bool = True) -> Client:
    """Probe, then connect; disconnects, reconnects and errors become log events."""
    await probe(url)

    async def error_cb(exc: Exception) -> None:
        if log is not None:
            log.warning("nats_error", error=type(exc).__name__, detail=str(exc)[:200])

    async def disconnected_cb() -> None:
        if log is not None:
            log.warning("nats_disconnected")

    async def reconnected_cb() -> None:
        if log is not None:
            log.info("nats_reconnected", url=url)

    return await nats.connect(
        url, name=name, error_cb=error_cb, disconnected_cb=disconnected_cb, reconnected_cb=reconnected_cb,
        max_reconnect_attempts=-1 if long_lived else 5, reconnect_time_wait=0.25, connect_timeout=2,
        ping_interval=5, max_outstanding_pings=3, pending_size=8 * 1024 * 1024,
    )
