"""The edge's drafting: rounds of concurrent requests draft as one batch on the draft model's slot cache.

Each live request holds one slot (`open`, prefilled on the model thread; `release` at its end).
Rounds that ask to draft close together (bounded wait, `max_batch`; no wait when every active
request already has its round in hand: see MicroBatcher) run as one `draft_batch` call on the
model thread, one forward per draft step; a row leaves at the step its stop rule fires or its
length is reached. Each row samples from its own round seed, so a request's draft never depends on
its batch. A draft model the slot cache does not support (slots.py says which), or a request that
finds every slot taken, drafts on the per-request path (DraftSession) as before.

No transport here: the edge worker calls `open` / `draft` / `apply` / `release`.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from nodes.batcher import Batched, MicroBatcher
from nodes.models.batch_draft import DraftJob, DraftResult, DraftStats, SlotDraftSession, draft_batch
from nodes.models.sessions import DraftSession, StopCallback
from nodes.models.slots import SlotCache, SlotsFull, slot_support
from nodes.worker_base import WorkerBase
from schemas.rounds import Draft, SamplingParams, Verdict


@dataclass(frozen=True)
class DraftBatchConfig:
    max_batch: int = 64          # rows in one batched draft
    wait_ms: float = 2.0         # the longest a round waits for others to join its batch
    slot_cache: bool = True      # False: every request drafts on the per-request path
    max_len: int = 8192          # tokens one slot may hold
    max_slots: int = 256
    memory_mb: int = 1024        # slot K/V budget; requests past it draft per request


@dataclass
class Drafted:
    """A round's draft with where its time went (ms)."""

    draft: Draft
    queued_ms: float       # waiting for the batch and for the model thread (and, batched, for other rows)
    batch_size: int = 1
    batch_wait_ms: float = 0.0
    forward_ms: float = 0.0      # the batch's model calls (batched drafts only)
    bookkeeping_ms: float = 0.0  # the batch's ids/positions/masks and K/V writes and reads
    sample_ms: float = 0.0       # the batch's per-row sampling and stop rules


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
        self.in_hand = 0  # rounds submitted and not yet drafted
        self.batcher: MicroBatcher[DraftJob, tuple[DraftResult, DraftStats]] = MicroBatcher(
            self._run_batch, config.max_batch, config.wait_ms / 1e3, more_coming=lambda: self.in_hand < self.active())
        self.sizes: Counter[int] = Counter()  # batch-size histogram, per-request drafts counted as 1

    async def open(self, context: list[int], params: SamplingParams) -> DraftSession:
        """A request's draft session, prefilled: on a slot when one is free, else per request."""
        if self.cache is not None:
            try:
                session, _ = await self.worker.run_model(SlotDraftSession, self.cache, context, self.vocab, params,
                                                         alone=self.alone())
                return session
            except SlotsFull:
                pass
        session, _ = await self.worker.run_model(DraftSession, self.model, context, self.vocab, params,
                                                 alone=self.alone())
        return session

    async def draft(self, session: DraftSession, length: int, seed: int, stop: StopCallback | None,
                    hidden: bool) -> Drafted:
        asked = time.perf_counter()
        if not isinstance(session, SlotDraftSession):
            d, started = await self.worker.run_model(session.propose, length, seed, stop, hidden, alone=self.alone())
            self.sizes[1] += 1
            return Drafted(d, (started - asked) * 1e3)
        self.in_hand += 1
        try:
            done: Batched = await self.batcher.submit(DraftJob(session, length, seed, stop, hidden))
        finally:
            self.in_hand -= 1
        res, stats = done.result
        if res.error is not None:
            raise res.error
        d = res.draft
        elapsed = (time.perf_counter() - asked) * 1e3
        # the round waited for everything but its own drafting: the batch to form, the model thread,
        # the other rows' steps after it left (their sum is what this machine made it wait)
        return Drafted(d, max(0.0, elapsed - d.draft_ms), done.size, done.wait_ms, stats.forward_ms,
                       stats.prep_ms + stats.kv_ms, stats.sample_ms)

    async def apply(self, session: DraftSession, verdict: Verdict) -> None:
        """Apply the round's verdict: a slot's is a crop (no compute, done here); per request on the model thread."""
        if isinstance(session, SlotDraftSession):
            session.apply(verdict)
        else:
            await self.worker.run_model(session.apply, verdict, alone=self.alone())

    async def release(self, session: DraftSession | None) -> None:
        """The request ended: its slot goes back after whatever the model thread is running (a batch
        that still holds the slot finishes writing it before another request may take it)."""
        if not isinstance(session, SlotDraftSession):
            return
        try:
            await self.worker.run_model(session.release)
        except RuntimeError:  # the model thread is shut down: nothing runs on the slot any more
            session.release()

    def close(self) -> None:
        self.batcher.close()

    async def _run_batch(self, jobs: list[DraftJob]) -> list[tuple[DraftResult, DraftStats]]:
        alone = len(jobs) == 1 and self.alone()
        (results, stats), _ = await self.worker.run_model(draft_batch, self.cache, jobs, alone=alone)
        self.sizes[len(jobs)] += 1
        if len(jobs) > 1:
            self._log(stats)
        return [(r, stats) for r in results]

    def _log(self, s: DraftStats) -> None:
        self.log.info("draft_batch", size=s.jobs, steps=s.steps, rows_per_step=s.rows_per_step,
                      forward_ms=round(s.forward_ms, 3), prep_ms=round(s.prep_ms, 3), kv_ms=round(s.kv_ms, 3),
                      sample_ms=round(s.sample_ms, 3), total_ms=round(s.total_ms, 3), padded_tokens=s.padded_tokens,
                      real_tokens=s.real_tokens)
