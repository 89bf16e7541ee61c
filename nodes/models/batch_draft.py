"""Draft many requests' rounds together: one forward per draft step over their slots.

`draft_batch(cache, jobs)` is the batched counterpart of `DraftSession.propose`. Step 1
feeds each row its pending tokens, every later step the token it just drafted; rows
leave the batch at the step their stop rule fires or their length is reached, and the
next step runs over the rows left. Each row samples exactly as `propose` does, from
its own round generator (`round_generators(seed)`): what a row draws depends only on
its own logits and seed, never on which rows share its batch. Hidden states are asked
of the model only at steps where a remaining row's stop rule reads them, and the
softmax a stop rule needs only for rows that have one.

A job's failure (a bad length, its stop rule raising) is that job's only; a failed
forward fails the jobs still in the batch at that step (their sessions are then unusable:
their owners drop them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from nodes.models.errors import ModelError
from nodes.models.sampling import draft_distribution, round_generators, sample_sparse
from nodes.models.sessions import DraftSession, DraftStep, StopCallback
from nodes.models.slots import SlotCache, SlotCapacityError
from schemas.rounds import Draft, SamplingParams


class SlotDraftSession(DraftSession):
    """A DraftSession whose K/V live in one slot of a shared SlotCache (same invariant: the slot
    covers every context token but `pending`; same `apply`). `propose` drafts it as a batch of one."""

    def __init__(self, cache: SlotCache, context: list[int], vocab_size: int,
                 params: SamplingParams = SamplingParams()):
        # not DraftSession.__init__: that builds a DynamicCache; the slot replaces it
        if not context:
            raise ModelError("context is empty: a session needs at least one token")
        self.model, self.vocab_size, self.params = cache.model, vocab_size, params
        self.slots = cache
        self.tokens: list[int] = list(context)
        self.pending: list[int] = [context[-1]]
        self._last_draft: list[int] = []
        self.tokens_fed = len(context) - 1
        cache.reserve(len(context))  # raises before a slot is taken
        self.slot: int | None = cache.admit()
        if len(context) > 1:
            try:
                cache.forward([self.slot], [context[:-1]], [0])
            except BaseException:
                self.release()
                raise

    @property
    def live_slot(self) -> int:
        if self.slot is None:
            raise ModelError("this draft session's slot was released")
        return self.slot

    @property
    def cached_len(self) -> int:
        return self.slots.length(self.live_slot)

    def _crop_to(self, length: int) -> None:
        self.slots.crop(self.live_slot, length)

    def release(self) -> None:
        """Give the slot back (idempotent); the session cannot draft after this."""
        if self.slot is not None:
            self.slots.evict(self.slot)
            self.slot = None

    def propose(self, max_len: int, seed: int = 0, stop: StopCallback | None = None, hidden: bool = False) -> Draft:
        (res,), _ = draft_batch(self.slots, [DraftJob(self, max_len, seed, stop, hidden)])
        if res.error is not None:
            raise res.error
        return res.draft


@dataclass
class DraftJob:
    session: SlotDraftSession
    length: int
    seed: int = 0
    stop: StopCallback | None = None
    hidden: bool = False  # the stop rule reads DraftStep.hidden


@dataclass
class DraftResult:
    draft: Draft | None
    steps: int = 0                 # batched steps this job took part in
    error: BaseException | None = None


@dataclass
class DraftStats:
    """What one `draft_batch` cost, step by step (rows per step shrink as rows leave)."""

    jobs: int
    steps: int = 0
    rows_per_step: list[int] = field(default_factory=list)
    forward_ms: float = 0.0   # model calls (K/V writes and reads included)
    prep_ms: float = 0.0      # ids, positions, 4-D masks, write indices
    kv_ms: float = 0.0        # K/V writes and reads (inside forward_ms)
    sample_ms: float = 0.0    # every row's sampling and stop rule
    padded_tokens: int = 0
    real_tokens: int = 0
    total_ms: float = 0.0


@dataclass
class _Row:
    job: DraftJob
    gen: torch.Generator
    feed: list[int]
    tokens: list[int] = field(default_factory=list)
    q_ids: list[list[int]] | None = None
    q_probs: list[list[float]] | None = None
    stopped: bool = False


def draft_batch(cache: SlotCache, jobs: list[DraftJob]) -> tuple[list[DraftResult], DraftStats]:
    """Draft every job; results in job order. Sessions must be live slots of `cache`, each at most once."""
    t0 = time.perf_counter()
    stats = DraftStats(len(jobs))
    results = [DraftResult(None) for _ in jobs]
    rows: list[tuple[int, _Row]] = []
    for i, job in enumerate(jobs):
        s = job.session
        try:
            if job.length < 0:
                raise ModelError(f"draft length must be >= 0, got {job.length}")
            if s.slots is not cache:
                raise ModelError("draft session is not on this slot cache")
            s.live_slot  # noqa: B018 (raises when released)
        except ModelError as exc:
            results[i].error = exc
            continue
        if job.length == 0:  # a target-only round: nothing to draft
            s._last_draft = []
            results[i].draft = Draft([], job.seed)
            continue
        greedy = s.params.greedy
        rows.append((i, _Row(job, round_generators(job.seed)[0], list(s.pending),
                             q_ids=None if greedy else [], q_probs=None if greedy else [])))
    pos = 0
    while rows:
        pos += 1
        rows = [(i, r) for i, r in rows if _fits(cache, r, results[i])]  # one too long fails alone
        if not rows:
            break
        want_hidden = any(r.job.hidden and r.job.stop is not None for _, r in rows)
        try:
            out = cache.forward([r.job.session.live_slot for _, r in rows], [r.feed for _, r in rows],
                                [1] * len(rows), hidden=want_hidden)
        except Exception as exc:  # nothing written: every row left fails (its session is dropped)
            for i, _ in rows:
                results[i].error = exc
            break
        t1 = time.perf_counter()
        stats.steps += 1
        stats.rows_per_step.append(len(rows))
        stats.forward_ms += out.forward_ms
        stats.prep_ms += out.prep_ms
        stats.kv_ms += out.kv_ms
        stats.padded_tokens += out.padded_tokens
        stats.real_tokens += out.real_tokens
        staying: list[tuple[int, _Row]] = []
        for b, (i, r) in enumerate(rows):
            results[i].steps += 1
            h = out.hidden[b][-1] if want_hidden and r.job.hidden else None
            try:
                done = _step(r, pos, out.logits[b][-1], h)
            except Exception as exc:  # this row's stop rule (or sampling) failed: this job only
                results[i].error = exc
                continue
            if done:
                results[i].draft = _finish(r, (time.perf_counter() - t0) * 1e3)
            else:
                staying.append((i, r))
        rows = staying
        stats.sample_ms += (time.perf_counter() - t1) * 1e3
    stats.total_ms = (time.perf_counter() - t0) * 1e3
    return results, stats


def _fits(cache: SlotCache, r: _Row, res: DraftResult) -> bool:
    need = cache.length(r.job.session.live_slot) + len(r.feed)
    if need > cache.max_len:
        res.error = SlotCapacityError(f"context of {need} tokens exceeds the draft slot capacity of {cache.max_len}")
        return False
    return True


def _step(r: _Row, pos: int, row_logits: torch.Tensor, hidden: torch.Tensor | None) -> bool:
    """One drafted token for row `r` at 1-based `pos`, exactly as DraftSession.propose draws it;
    True when the row leaves the batch (its stop rule fired or its length is reached)."""
    s, job = r.job.session, r.job
    logits = row_logits[: s.vocab_size]
    if s.params.greedy:
        probs = torch.softmax(logits.float(), dim=-1) if job.stop is not None else None
        tok = int(torch.argmax(logits))
        prob = float(probs[tok]) if probs is not None else 1.0
    else:
        ids, probs = draft_distribution(logits, s.params)
        tok, prob = sample_sparse(ids, probs, r.gen)
        r.q_ids.append(ids.tolist())
        r.q_probs.append(probs.tolist())
    r.tokens.append(tok)
    if pos >= job.length:
        return True
    if job.stop is not None and job.stop(DraftStep(pos, tok, prob, logits, hidden)):
        r.stopped = True
        return True
    r.feed = [tok]
    return False


def _finish(r: _Row, elapsed_ms: float) -> Draft:
    """The row's draft; its slot covers pending + tokens[:-1] (the last token is never fed)."""
    s = r.job.session
    s.tokens_fed += len(r.job.session.pending) + len(r.tokens) - 1
    s._last_draft = r.tokens
    return Draft(r.tokens, r.job.seed, r.q_ids, r.q_probs, elapsed_ms, r.stopped)
