"""Micro-batching: jobs that arrive close together run as one call.

The first job of a batch waits at most `max_wait_s` for company; the batch goes
earlier when it is full (`max_batch`) or when `more_coming()` says no other job
can arrive soon (a verifier whose every session already has a round in hand:
waiting would only add latency, e.g. to a single stream). Batches run one at a
time, so jobs that arrive while one computes form the next (their wait is
already spent). A job whose result `again(result)` says is unfinished (a long
prompt prefilled a chunk per batch) goes back to the front of the queue and runs
in the next batch, so its work is spread over batches that others' rounds share.
With `share_key` (a verifier: the round's edge) a full queue is served one job per key in
turn, so a sender with many rounds waiting takes its share of each batch, not all of it.
No transport and no model here: the caller's `run` does the work.
"""
from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class Batched(Generic[R]):
    """A job's result, with the batch it ran in."""

    result: R
    size: int
    wait_ms: float  # from the job's arrival to its batch's dispatch


class MicroBatcher(Generic[J, R]):
    def __init__(self, run: Callable[[list[J]], Awaitable[list[R]]], max_batch: int = 32, max_wait_s: float = 0.002,
                 more_coming: Callable[[], bool] = lambda: True, again: Callable[[R], bool] = lambda r: False,
                 share_key: Callable[[J], Hashable] | None = None):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.run, self.max_batch, self.max_wait_s, self.more_coming = run, max_batch, max_wait_s, more_coming
        self.again, self.share_key = again, share_key
        self._pending: list[tuple[J, asyncio.Future, float]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.sizes: Counter[int] = Counter()  # batch-size histogram
        self.batches = 0
        self.running = 0  # jobs in the batch being computed now

    async def submit(self, job: J) -> Batched[R]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((job, fut, loop.time()))
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        return await fut

    def close(self) -> None:
        """Stop dispatching; jobs not yet dispatched are cancelled."""
        if self._task is not None:
            self._task.cancel()
        for _, fut, _ in self._pending:
            fut.cancel()
        self._pending.clear()

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._pending[0][2] + self.max_wait_s
        while len(self._pending) < self.max_batch and self.more_coming():
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[tuple[J, asyncio.Future, float]]:
        """The next batch, out of `_pending`: the oldest jobs, or with `share_key` one job of each key in
        turn (each key's own in arrival order), so one sender's backlog cannot fill every batch while
        another's round waits behind it."""
        if self.share_key is None or len(self._pending) <= self.max_batch:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            return batch
        queues: dict[Hashable, deque[int]] = {}
        for i, (job, _, _) in enumerate(self._pending):
            queues.setdefault(self.share_key(job), deque()).append(i)
        picked: set[int] = set()
        while len(picked) < self.max_batch:
            for q in queues.values():
                if q and len(picked) < self.max_batch:
                    picked.add(q.popleft())
        batch = [b for i, b in enumerate(self._pending) if i in picked]
        self._pending = [b for i, b in enumerate(self._pending) if i not in picked]
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._collect()
            batch = [b for b in self._take() if not b[1].done()]  # a cancelled submitter's job is dropped
            if not batch:
                continue
            now = loop.time()
            self.sizes[len(batch)] += 1
            self.batches += 1
            self.running = len(batch)
            try:
                results = await self.run([job for job, _, _ in batch])
                assert len(results) == len(batch), "run must return one result per job"
            except asyncio.CancelledError:
                for _, fut, _ in batch:
                    fut.cancel()
                raise
            except Exception as exc:  # the whole call failed: every job of the batch hears of it
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.running = 0
            unfinished = [(job, fut, arrived) for (job, fut, arrived), res in zip(batch, results)
                          if self.again(res) and not fut.done()]
            self._pending[:0] = unfinished  # first in the next batch, with their first arrival time
            for (_, fut, arrived), res in zip(batch, results):
                if not fut.done() and not self.again(res):
                    fut.set_result(Batched(res, len(batch), (now - arrived) * 1e3))
