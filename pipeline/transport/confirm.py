"""A flush that covers every command made before it, and that may time out safely.

Two behaviours of nats-py (2.16) that a plain `flush()` runs into:

- It writes its PING straight to the socket, ahead of the commands still queued
  for the connection's flusher task: an UNSUB, SUB or PUB made just before is
  written after the PING, so the PONG proves nothing about it. Edge.stop relied
  on that PONG; a request sent right after could still be routed to the
  subscription being removed and time out instead of getting `no_responders`
  (a CI flake, with the queue subject and with an edge's own subject). The first
  round trip gives the flusher its turn to write the queue; the second PING
  follows those commands on the socket, so its PONG means the server has
  processed everything sent before the call.
- A flush that times out cancels its PONG future but leaves it queued; when the
  late PONG arrives, setting the cancelled future's result raises inside the
  connection's read loop, which ends: the connection stays "connected" and
  receives nothing more (checked here against a real nats-server). So the PING's
  own wait here is long, and a caller's shorter `timeout` only stops waiting for
  it (the round trip goes on in the background and completes normally).
"""
from __future__ import annotations

import asyncio

_PONG_WAIT_S = 600.0  # longer than any PONG can be late: the connection's own ping check reconnects first
_in_flight: set[asyncio.Task] = set()


def _forget(task: asyncio.Task) -> None:
    _in_flight.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a flush that failed with its connection is nothing to report


async def confirm_sent(nc, timeout: float = 2.0) -> None:
    """Return once the server has processed every command this connection made before the call;
    raise TimeoutError after `timeout` s per round trip (the connection is left intact)."""
    for _ in range(2):
        task = asyncio.ensure_future(nc.flush(timeout=_PONG_WAIT_S))
        _in_flight.add(task)
        task.add_done_callback(_forget)
        await asyncio.wait_for(asyncio.shield(task), timeout)
