"""The edge's timing events, delivered to the timing stream even across a broker or link outage.

A plain publish is lost when the edge's broker cannot forward it (a leaf node whose link to
the hub is down, a broker restarting): the controller would learn from a hole. Once the
timing stream has been seen, every event is a JetStream publish with an ack, kept in a
bounded, ordered outbox until the stream has stored it, and retried with backoff meanwhile.
Each carries a `Nats-Msg-Id` unique to this edge process (edge id, boot id, sequence number),
so a retry whose first attempt was stored after all is dropped by the stream's duplicate
window. Before the stream exists (an edge learning locally, no controller) events are plain
publishes, as there is nowhere durable to keep them; the outbox looks for the stream again
every few seconds. Past `max_events` the oldest waiting event is dropped and counted (memory
is bounded whatever the outage lasts).
"""
from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from schemas import subjects

RETRY_MIN_S, RETRY_MAX_S = 0.1, 2.0
LOOK_FOR_STREAM_S = 5.0


class TimingOutbox:
    def __init__(self, nc: Client, js: Any, log: Any, edge_id: str, max_events: int = 100_000,
                 ack_timeout_s: float = 2.0):
        self.nc, self.js, self.log, self.edge_id = nc, js, log, edge_id
        self.max_events, self.ack_timeout_s = max_events, ack_timeout_s
        self.boot = os.urandom(4).hex()
        self.seq = 0
        self.queue: deque[tuple[str, str, bytes]] = deque()  # (msg id, subject, data), oldest first
        self.durable = False       # the timing stream has been seen: publish with acks
        self.stored = 0            # events the stream acknowledged
        self.plain = 0             # events published without a stream to keep them
        self.dropped = 0           # events dropped at the bound
        self.retries = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._looked = -LOOK_FOR_STREAM_S

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def put(self, subject: str, data: bytes) -> None:
        """Queue one event (never blocks the round that produced it)."""
        self.seq += 1
        self.queue.append((f"{self.edge_id}.{self.boot}.{self.seq}", subject, data))
        if len(self.queue) > self.max_events:
            self.queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self.log.warning("timing_dropped", dropped=self.dropped, bound=self.max_events)
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every queued event is stored, then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.queue and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self.queue:
            self.log.warning("timing_unsent", events=len(self.queue))

    async def _look_for_stream(self) -> None:
        loop = asyncio.get_running_loop()
        if self.durable or loop.time() - self._looked < LOOK_FOR_STREAM_S:
            return
        self._looked = loop.time()
        try:
            await self.js.stream_info(subjects.TIMING_STREAM)
        except (JetStreamError, NatsError, asyncio.TimeoutError, OSError):
            return
        self.durable = True
        self.log.info("timing_durable", stream=subjects.TIMING_STREAM)

    async def _run(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
            await self._look_for_stream()
            msg_id, subject, data = self.queue[0]
            try:
                if self.durable:
                    await self.js.publish(subject, data, timeout=self.ack_timeout_s,
                                          headers={"Nats-Msg-Id": msg_id})
                    self.stored += 1
                else:
                    await self.nc.publish(subject, data)
                    self.plain += 1
            except (JetStreamError, NatsError, asyncio.TimeoutError, OSError) as exc:
                # not stored (link or broker down, stream gone for now): keep it, first in line
                self.retries += 1
                if self.retries == 1 or self.retries % 100 == 0:
                    self.log.warning("timing_retry", error=type(exc).__name__, waiting=len(self.queue),
                                     retries=self.retries)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, RETRY_MAX_S)
                continue
            backoff = RETRY_MIN_S
            if self.queue and self.queue[0][0] == msg_id:  # not dropped at the bound meanwhile
                self.queue.popleft()
