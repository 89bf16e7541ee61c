"""What every worker shares: subscriptions, one model thread, bounded message tasks.

nats-py runs one subscription's callbacks one after another, so each message
becomes its own task, admitted only while fewer than `max_in_flight` run (the
caller answers `overloaded` otherwise: a full worker says so at once instead
of letting messages pile up unseen in the client's buffer); model compute goes
to a single worker thread so the event loop keeps receiving while a round
computes.

The exception is a worker serving a single request: when the caller says no
other request is live (`alone`), no other handler runs and the model thread is
idle, compute runs inline on the loop. Handing work to a sleeping thread and
waking the loop again costs ~0.3 ms each way on these VMs (measured), most of a
round's overhead at low load; with one request there is nothing to overlap
with. With several live requests a blocked loop would hold back their messages
(measured at concurrency 8: the p90 of draft send -> verifier receive doubled),
so compute stays on the thread.

`model_nice` lowers the model thread's scheduling priority (Linux: a thread's
nice value is its own). With both cores busy computing, the event loops and the
broker then get the CPU promptly when a message arrives (measured in the demo,
nice 5 vs 0, interleaved runs: transport p90 6.7/5.4 vs 9.2/6.9 ms).
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Coroutine, TypeVar

from nats.errors import Error as NatsError

T = TypeVar("T")


class WorkerBase:
    def __init__(self, nc: Any, log: Any, thread_name: str, max_in_flight: int, inline_when_alone: bool = True,
                 model_nice: int = 0):
        self.nc, self.log, self.model_nice = nc, log, model_nice
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name, initializer=lower_priority,
                                       initargs=(model_nice,))
        self.max_in_flight = max_in_flight
        self.tasks: set[asyncio.Task] = set()       # one per message being handled
        self.background: set[asyncio.Task] = set()  # housekeeping loops
        self.subs: list = []
        self.inline_when_alone = inline_when_alone
        self.jobs_submitted = 0  # written by the loop thread only
        self.jobs_finished = 0   # written by the model thread only (so no lock is needed)
        self.inline_calls = 0

    def try_spawn(self, coro: Coroutine) -> asyncio.Task | None:
        """Run `coro` as a task if fewer than `max_in_flight` run; None (coro closed) when full."""
        if len(self.tasks) >= self.max_in_flight:
            coro.close()
            return None
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def spawn(self, coro: Coroutine) -> None:
        """Run `coro` as a task once a slot is free (in-process callers that may wait)."""
        while len(self.tasks) >= self.max_in_flight:
            await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)
        self.try_spawn(coro)

    async def send_now(self, subject: str, data: bytes) -> bool:
        """Publish, then yield once so nats-py's flusher task writes it to the socket before
        this task goes on to slower work (logging): a reply is not held back by our logs.
        False (and a log line) when the connection cannot take it: a handler never dies of it."""
        try:
            await self.nc.publish(subject, data)
        except (NatsError, OSError) as exc:  # closed / draining / outbound buffer full
            self.log.warning("publish_failed", subject=subject, error=type(exc).__name__)
            return False
        await asyncio.sleep(0)
        return True

    async def run_model(self, fn: Callable[..., T], *args: Any, alone: bool = False) -> tuple[T, float]:
        """Run model compute; returns (result, time.perf_counter() when it started)."""
        if alone and self.inline_when_alone and self.jobs_submitted == self.jobs_finished and len(self.tasks) <= 1:
            self.inline_calls += 1
            started = time.perf_counter()
            return fn(*args), started
        started = [0.0]

        def work() -> T:
            started[0] = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.jobs_finished += 1

        self.jobs_submitted += 1
        result = await asyncio.get_running_loop().run_in_executor(self.pool, work)
        return result, started[0]

    async def unsubscribe_all(self) -> None:
        for sub in self.subs:
            try:
                await sub.unsubscribe()
            except NatsError:
                pass  # the connection is already closed: nothing left to unsubscribe
        self.subs = []

    async def stop(self) -> None:
        """Cancel what still runs and wait for it, then release the model thread (never the other
        way round: a task that outlives the pool fails with "cannot schedule new futures")."""
        await self.unsubscribe_all()
        pending = [*self.tasks, *self.background]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        self.pool.shutdown(wait=False, cancel_futures=True)


def lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's nice value (Linux only; never raises: a pool
    initializer that raises would break the pool)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass
