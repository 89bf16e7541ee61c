"""What every worker shares: subscriptions, one model thread, bounded message tasks.

nats-py runs one subscription's callbacks one after another, so each message
becomes its own task (bounded by `max_in_flight`); model compute goes to a
single worker thread so the event loop keeps receiving while a round computes.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine


class WorkerBase:
    def __init__(self, nc: Any, log: Any, thread_name: str, max_in_flight: int):
        self.nc, self.log = nc, log
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.tasks: set[asyncio.Task] = set()
        self.subs: list = []

    async def spawn(self, coro: Coroutine) -> None:
        """Run `coro` as a task once a slot is free; the slot is released when it ends."""
        await self.in_flight.acquire()
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(lambda t: (self.tasks.discard(t), self.in_flight.release()))

    async def stop(self) -> None:
        for s in self.subs:
            await s.unsubscribe()
        for t in list(self.tasks):
            t.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
