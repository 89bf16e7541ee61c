"""The edge's drafting: concurrent requests' rounds draft step by step in one batch on the draft
model's slot cache.

Each live request holds one slot (`open`, prefilled on the model thread; `release` at its end).
A round that asks to draft waits a bounded time for company (`wait_ms`, or until `max_batch`
rounds are in hand, or no wait when every active request already has its round in hand), then a
*drive* runs on the model thread: one forward per draft step over the rows drafting. Rounds that
ask while a drive runs join it at its next step (for its first `join_steps` steps, so work queued
behind it on the model thread, a new request's prefill, waits a bounded time), and a row leaves at
the step its stop rule fires or its length is reached: its draft goes back at once, not when the
batch ends. Each row samples from its own round seed, so a request's draft never depends on who
shared its steps. A draft model the slot cache does not support (slots.py says which), or a
request that finds every slot taken, drafts on the per-request path (DraftSession) as before.

No transport here: the edge worker calls `open` / `draft` / `apply` / `release`.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from nodes.config import DraftBatchConfig
from nodes.models.batch_draft import DraftJob, DraftResult, DraftRows, DraftStats, SlotDraftSession
from nodes.models.sessions import DraftSession, StopCallback
from nodes.models.slots import SlotCache, SlotsFull, slot_support
from pipeline.transport.worker_base import WorkerBase
from schemas.rounds import Draft, SamplingParams, Verdict


@dataclass
class Drafted:
    """A round's draft with where its time went (ms)."""

    draft: Draft
    queued_ms: float             # waiting for company and the model thread, and (batched) for the step to end
    batch_size: int = 1          # rows in its first step
    batch_wait_ms: float = 0.0   # from asking to its first step
    forward_ms: float = 0.0      # the steps it took part in: model calls
    bookkeeping_ms: float = 0.0  # ... ids/positions/masks and K/V writes and reads
    sample_ms: float = 0.0       # ... every row's sampling and stop rule


@dataclass
class _Ask:
    job: DraftJob
    future: asyncio.Future
    asked: float                 # time.perf_counter()
    started: float = 0.0         # its first step began


class DraftBatcher:
    def __init__(self, worker: WorkerBase, model: Any, vocab_size: int, config: DraftBatchConfig,
                 active: Callable[[], int], alone: Callable[[], bool], log: Any):
        """`active()`: requests that may ask to draft soon; `alone()`: whether only one request is live
        (its compute then runs inline, see WorkerBase.run_model)."""
        self.worker, self.model, self.vocab, self.cfg, self.log = worker, model, vocab_size, config, log
        self.active, self.alone = active, alone
        self.why_not = slot_support(model) if config.slot_cache else "slot cache disabled"
        self.cache = SlotCache(model, config.max_slots, config.max_len, max_bytes=config.memory_mb << 20) \
            if self.why_not is None else None
        self.sizes: Counter[int] = Counter()  # forward passes per rows in them (per-request drafts: 1 per token)
        self._lock = threading.Lock()         # the intake is shared with the model thread
        self._intake: deque[_Ask] = deque()
        self._driving = False
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- sessions -------------------------------------------------------------------------
    async def open(self, context: list[int], params: SamplingParams) -> DraftSession:
        """A request's draft session, prefilled: on a slot when one is free, else per request."""
        if self.cache is not None:
            try:
                session, _ = await self.worker.run_model(SlotDraftSession, self.cache, context, self.vocab, params,
                                                         self.cfg.prefill_chunk, alone=self.alone())
            except SlotsFull:
                pass
            else:
                try:  # a long prompt a chunk per model-thread job: other requests' draft steps run in between
                    while not session.prefilled:
                        await self.worker.run_model(session.prefill_step, self.cfg.prefill_chunk,
                                                    alone=self.alone())
                except BaseException:
                    session.release()
                    raise
                return session
        session, _ = await self.worker.run_model(DraftSession, self.model, context, self.vocab, params,
                                                 alone=self.alone())
        return session

    async def apply(self, session: DraftSession, verdict: Verdict) -> None:
        """Apply the round's verdict: a slot's is a crop (no compute, done here); per request on the model thread."""
        if isinstance(session, SlotDraftSession):
            session.apply(verdict)
        else:
            await self.worker.run_model(session.apply, verdict, alone=self.alone())

    async def release(self, session: DraftSession | None) -> None:
        """The request ended: its slot goes back after whatever the model thread is running (a drive
        that still steps the slot finishes writing it before another request may take it)."""
        if not isinstance(session, SlotDraftSession):
            return
        try:
            await self.worker.run_model(session.release)
        except RuntimeError:  # the model thread is shut down: nothing runs on the slot any more
            session.release()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with self._lock:
            for ask in self._intake:
                ask.future.cancel()
            self._intake.clear()

    # --- drafting ---------------------------------------------------------------------------
    async def draft(self, session: DraftSession, length: int, seed: int, stop: StopCallback | None,
                    hidden: bool) -> Drafted:
        asked = time.perf_counter()
        if not isinstance(session, SlotDraftSession):
            d, started = await self.worker.run_model(session.propose, length, seed, stop, hidden, alone=self.alone())
            self.sizes[1] += len(d.tokens)
            return Drafted(d, (started - asked) * 1e3)
        ask = _Ask(DraftJob(session, length, seed, stop, hidden), asyncio.get_running_loop().create_future(), asked)
        with self._lock:
            self._intake.append(ask)
        self._kick.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._dispatch())
        res: DraftResult = await ask.future
        if res.error is not None:
            raise res.error
        d = res.draft
        elapsed = (time.perf_counter() - asked) * 1e3
        # everything but its own steps was waiting: for company, the model thread, the step to end
        return Drafted(d, max(0.0, elapsed - d.draft_ms), max(1, res.first_rows),
                       max(0.0, (ask.started - asked) * 1e3) if ask.started else 0.0, res.forward_ms,
                       res.bookkeeping_ms, res.sample_ms)

    def _waiting(self) -> int:
        with self._lock:
            return len(self._intake)

    async def _dispatch(self) -> None:
        """Start a drive when rounds wait and none runs (a running one takes them at its next step)."""
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            with self._lock:
                first = self._intake[0].asked if self._intake and not self._driving else None
            if first is None:
                await self._kick.wait()
                continue
            deadline = first + self.cfg.wait_ms / 1e3  # perf_counter and the loop clock both count seconds
            while self._waiting() < min(self.cfg.max_batch, self.active()):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._kick.clear()
                try:
                    await asyncio.wait_for(self._kick.wait(), left)
                except asyncio.TimeoutError:
                    break
            with self._lock:
                self._driving = True
            alone = self._waiting() == 1 and self.alone()
            try:
                await self.worker.run_model(self._drive, loop, alone=alone)
            except Exception as exc:  # the drive itself broke (a bug): those it held hear of it
                self.log.error("draft_drive_failed", error=repr(exc)[:300])
                with self._lock:
                    self._driving = False

    def _drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the model thread: step the rows until none is left; rounds that asked meanwhile join."""
        rows = DraftRows(self.cache)
        held: dict[int, _Ask] = {}
        try:
            while True:
                with self._lock:
                    taking = []
                    if rows.stats.steps < self.cfg.join_steps:
                        while self._intake and len(rows) + len(taking) < self.cfg.max_batch:
                            taking.append(self._intake.popleft())
                    if not rows and not taking:
                        self._driving = False
                        break
                now = time.perf_counter()
                for ask in taking:
                    if ask.future.done():  # its request was cancelled before it joined
                        continue
                    ask.started = now
                    held[id(ask)] = ask
                    res = rows.add(ask.job, id(ask))
                    if res is not None:  # nothing to draft, or it cannot draft here
                        self._answer(loop, held.pop(id(ask)), res)
                if rows:
                    for key, res in rows.step():
                        self._answer(loop, held.pop(key), res)
        except BaseException as exc:
            for ask in held.values():
                self._answer(loop, ask, DraftResult(None, error=exc))
            with self._lock:
                self._driving = False
            raise
        finally:
            if rows.stats.steps:
                loop.call_soon_threadsafe(self._log, rows.stats)

    @staticmethod
    def _answer(loop: asyncio.AbstractEventLoop, ask: _Ask, res: DraftResult) -> None:
        def deliver() -> None:
            if not ask.future.done():
                ask.future.set_result(res)
        loop.call_soon_threadsafe(deliver)

    def _log(self, s: DraftStats) -> None:
        """On the event loop: one line per drive, and the histogram of rows per step."""
        self.sizes.update(s.rows_per_step)
        self.log.debug("draft_batch", size=s.jobs, steps=s.steps, rows_per_step=s.rows_per_step,
                       forward_ms=round(s.forward_ms, 3), prep_ms=round(s.prep_ms, 3), kv_ms=round(s.kv_ms, 3),
                       sample_ms=round(s.sample_ms, 3), total_ms=round(s.total_ms, 3), padded_tokens=s.padded_tokens,
                       real_tokens=s.real_tokens)
