"""confirm_sent: what a plain nats-py flush does not give, against a real nats-server."""
from __future__ import annotations

import asyncio

import pytest

from pipeline.transport.confirm import confirm_sent
from pipeline.transport import bus
from tests.pipeline_fixtures import wait_for

PING = b"PING\r\n"


def record_writes(nc) -> list[bytes]:
    """Every chunk the connection writes to its socket, in order (the writes still happen)."""
    wrote: list[bytes] = []
    transport = nc._transport
    write, writelines = transport.write, transport.writelines

    def one(data):
        wrote.append(bytes(data))
        return write(data)

    def many(chunks):
        chunks = [bytes(c) for c in chunks]
        wrote.extend(chunks)
        return writelines(chunks)

    transport.write, transport.writelines = one, many
    return wrote


async def test_confirm_sends_a_ping_behind_an_unsubscribe_made_just_before_it(broker):
    nc = await bus.connect(broker.url, "confirm-order", long_lived=False)
    try:
        sub = await nc.subscribe("specstop.test.confirm-order")
        await confirm_sent(nc)
        wrote = record_writes(nc)
        await sub.unsubscribe()
        await confirm_sent(nc)
        unsub = next(i for i, chunk in enumerate(wrote) if chunk.startswith(b"UNSUB"))
        assert PING in wrote[unsub + 1:]  # the PONG that returned confirm_sent answered a PING sent after it
    finally:
        await nc.close()


async def test_a_confirm_that_times_out_leaves_the_connection_receiving(broker):
    """nats-py's own flush(timeout) leaves its cancelled PONG future queued, and the late PONG ends the
    connection's read loop: it stays connected and hears nothing more."""
    nc = await bus.connect(broker.url, "confirm-timeout", long_lived=False)
    other = await bus.connect(broker.url, "confirm-other", long_lived=False)
    got: list[bytes] = []

    async def keep(msg):
        got.append(msg.data)

    try:
        await nc.subscribe("specstop.test.after-timeout", cb=keep)
        await confirm_sent(nc)
        with pytest.raises(asyncio.TimeoutError):
            await confirm_sent(nc, timeout=1e-6)  # shorter than any round trip to the server
        await asyncio.sleep(0.2)  # the late PONG arrives
        await other.publish("specstop.test.after-timeout", b"still here")
        await confirm_sent(other)
        await wait_for(lambda: got == [b"still here"], timeout=10)
    finally:
        await nc.close()
        await other.close()
