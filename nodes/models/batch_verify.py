"""Verify many sessions' drafts in one forward pass over a slot cache.

`BatchVerifier.run(jobs)` is the batched counterpart of `sessions.verify_round`:
each job brings its session state (or a context to build one from), its draft,
sampling parameters and seed; one forward over all slot sessions computes every
job's L + 1 positions, then each job gets its own verdict from the same
acceptance rule as the per-request path (`sessions.accept_draft`).

A job that cannot use a slot runs on the per-request path (`TargetSession`) in
the same call: a model class the slot cache does not support, every slot taken,
or the slot memory budget reached (a live slot session that cannot grow moves
to the per-request path, rebuilt from its tokens). A job's bad input fails that
job only, with a one-line ModelError; the others still get their verdicts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nodes.models.errors import ModelError
from nodes.models.sampling import accept_greedy
from nodes.models.sessions import TargetSession, accept_draft, check_draft
from nodes.models.slots import SlotCache, SlotHolder, SlotsFull, slot_support
from nodes.models.static_forward import StaticForward
from nodes.models.tree_verify import accept_tree, verify_tree_session
from nodes.protocol.tree import feed_parents
from schemas.rounds import Draft, SamplingParams, Verdict


class SlotSession(SlotHolder):
    """A TargetSession on a slot: the slot covers every token but `pending`, which (with the
    next draft) is fed in the next batched forward."""

    def __init__(self, cache: SlotCache, context: list[int], params: SamplingParams,
                 prefill_chunk: int | None = None):
        self.params = params
        self.tokens: list[int] = list(context)
        self.pending: list[int] = list(context[-1:])
        self._open_slot(cache, context, prefill_chunk)

    def apply(self, draft: Draft, accepted: int, next_token: int) -> None:
        """After the forward fed pending + draft: keep pending and the accepted drafts (every
        context token then, `tokens` includes pending), drop the rest; the target's token is next."""
        self.slot_cache.crop(self.live_slot, len(self.tokens) + accepted)
        self.tokens.extend(list(draft.tokens[:accepted]) + [next_token])
        self.pending = [next_token]

    def apply_tree(self, draft: Draft, path: list[int], next_token: int) -> None:
        """After the forward fed pending + a tree: keep pending and the accepted path's rows (moved
        to follow it), drop every other node; the target's token is next."""
        start = len(self.tokens) - len(self.pending)
        k = len(self.pending)
        self.slot_cache.compact(self.live_slot, start, list(range(k)) + [k + v for v in path])
        self.tokens.extend([draft.tokens[v] for v in path] + [next_token])
        self.pending = [next_token]


@dataclass
class VerifyJob:
    state: Any                       # SlotSession | TargetSession | None
    context: list[int] | None        # rebuild the session from this when given
    draft: Draft
    params: SamplingParams
    prefill_ms: float = 0.0          # spent on this job's context so far (over several runs when chunked)


@dataclass
class JobResult:
    state: Any
    verdict: Verdict | None
    prefill_ms: float = 0.0
    error: BaseException | None = None
    again: bool = False  # its context is still being prefilled: submit the (updated) job to the next run


@dataclass
class BatchStats:
    """What one `run` cost: the batched forward (with its bookkeeping) and everything around it."""

    jobs: int
    slot_rows: int = 0          # jobs verified in the batched forward
    per_request: int = 0        # jobs verified on the per-request path
    failed: int = 0
    forward_ms: float = 0.0     # the batched model call (K/V writes and reads included)
    prep_ms: float = 0.0        # ids, positions, 4-D mask, write indices
    kv_ms: float = 0.0          # K/V writes and reads (inside forward_ms)
    accept_ms: float = 0.0      # every job's acceptance and rollback
    prefill_ms: float = 0.0     # sessions built from a context (whole, or this run's chunk)
    prefill_tokens: int = 0     # context tokens fed by prefill in this run
    prefilling: int = 0         # jobs whose context is still being prefilled (they come back `again`)
    per_request_ms: float = 0.0
    padded_tokens: int = 0
    real_tokens: int = 0
    total_ms: float = 0.0
    static: bool = False        # the batched forward ran at static shapes (a CUDA graph replay on a GPU)
    forwards: int = 0           # batched forwards (one per job in batch-invariant mode)


class BatchVerifier:
    """One target model's verifier: slot sessions where the model class allows, else per request."""

    def __init__(self, model: Any, vocab_size: int, max_slots: int = 128, max_len: int = 8192,
                 max_bytes: int = 2 << 30, use_slots: bool = True, prefill_chunk: int | None = None,
                 graphs: bool | None = False, batch_invariant: bool = False):
        """`prefill_chunk`: context tokens prefilled per `run` (None: a whole context at once). With it, a
        long prompt costs the other sessions' rounds one chunk's forward per run instead of the whole
        prompt's; its own job comes back `again` until its context is in.

        `graphs`: verify at static shapes (nodes/models/static_forward.py), captured as CUDA graphs on a GPU
        and run eagerly on a CPU; None: on for a CUDA model, off otherwise. `batch_invariant`: every job's
        forward runs alone, so its verdict never depends on which other sessions share the batch (near-ties
        in bf16 flip with the batch's shape); it costs one forward per job."""
        self.model, self.vocab, self.prefill_chunk = model, vocab_size, prefill_chunk
        self.batch_invariant = batch_invariant
        self.why_not = slot_support(model) if use_slots else "slot cache disabled"
        self.cache = SlotCache(model, max_slots, max_len, max_bytes=max_bytes) if self.why_not is None else None
        if graphs is None:
            graphs = self.cache is not None and self.cache.device.type == "cuda"
        self.static = StaticForward(self.cache, vocab_size) if graphs and self.cache is not None else None
        self.static_error: str | None = None  # why the static path was switched off, if it failed

    def release(self, state: Any) -> None:
        """A session dropped by its owner: free its slot (per-request states need nothing)."""
        if isinstance(state, SlotSession):
            state.release()

    def new_session(self, context: list[int], params: SamplingParams) -> SlotSession | TargetSession:
        if self.cache is not None:
            try:
                return SlotSession(self.cache, context, params, self.prefill_chunk)
            except SlotsFull:
                pass
        return TargetSession(self.model, context, self.vocab, params)

    def run(self, jobs: list[VerifyJob]) -> tuple[list[JobResult], BatchStats]:
        t0 = time.perf_counter()
        stats = BatchStats(len(jobs))
        results = [self._prepare(j, stats) for j in jobs]
        self._prefill_chunks(jobs, results, stats)
        rows = [i for i, r in enumerate(results) if r.error is None and not r.again and isinstance(r.state, SlotSession)]
        if rows:
            self._batched(rows, jobs, results, stats)
        for i, r in enumerate(results):
            if r.error is None and isinstance(r.state, TargetSession):
                t1 = time.perf_counter()
                try:
                    d = jobs[i].draft
                    r.verdict = r.state.verify(d) if d.parents is None else verify_tree_session(r.state, d)
                except Exception as exc:  # this job's failure only
                    r.error = exc
                stats.per_request += 1
                stats.per_request_ms += (time.perf_counter() - t1) * 1e3
        stats.failed = sum(r.error is not None for r in results)
        stats.prefilling = sum(r.again for r in results)
        stats.total_ms = (time.perf_counter() - t0) * 1e3
        return results, stats

    def _prepare(self, job: VerifyJob, stats: BatchStats) -> JobResult:
        """Check the draft, build the session when asked, make room for this round's tokens."""
        res = JobResult(job.state, None)
        try:
            check_draft(job.draft, job.params)
            if job.context is not None or job.state is None:
                t1 = time.perf_counter()
                res.state = self.new_session(list(job.context or []), job.params)
                job.prefill_ms += (time.perf_counter() - t1) * 1e3
                stats.prefill_ms += (time.perf_counter() - t1) * 1e3
                job.state, job.context = res.state, None  # a job that comes back continues this session
            res.prefill_ms = job.prefill_ms
            if isinstance(res.state, SlotSession) and not res.state.prefilled:
                res.again = True
            elif isinstance(res.state, SlotSession):
                need = res.state.cached_len + len(res.state.pending) + len(job.draft)
                try:
                    res.state.slot_cache.reserve(need)
                except SlotsFull:  # the memory budget is reached: this session continues per request
                    old, res.state = res.state, TargetSession(self.model, list(res.state.tokens), self.vocab,
                                                              job.params)
                    old.release()
        except Exception as exc:
            res.error = exc
        return res

    def _prefill_chunks(self, jobs: list[VerifyJob], results: list[JobResult], stats: BatchStats) -> None:
        """Feed at most `prefill_chunk` context tokens in this run, oldest job first; a job whose context
        is then complete joins this run's batched forward."""
        budget = self.prefill_chunk or 0
        for job, res in zip(jobs, results):
            if not res.again or res.error is not None or budget <= 0:
                continue
            t1 = time.perf_counter()
            try:
                fed = res.state.prefill_step(budget)
            except Exception as exc:  # the session released its slot; the edge resends the context
                res.error, res.again = exc, False
                continue
            budget -= fed
            ms = (time.perf_counter() - t1) * 1e3
            job.prefill_ms += ms
            res.prefill_ms = job.prefill_ms
            stats.prefill_ms += ms
            stats.prefill_tokens += fed
            if res.state.prefilled:
                res.again = False
                try:
                    res.state.slot_cache.reserve(res.state.cached_len + len(res.state.pending) + len(job.draft))
                except SlotsFull as exc:
                    res.error = exc

    def _batched(self, rows: list[int], jobs: list[VerifyJob], results: list[JobResult], stats: BatchStats) -> None:
        groups = [[i] for i in rows] if self.batch_invariant else [rows]
        stats.slot_rows = sum(self._forward_group(group, jobs, results, stats) for group in groups)

    def _forward_group(self, rows: list[int], jobs: list[VerifyJob], results: list[JobResult],
                       stats: BatchStats) -> int:
        """One forward over `rows` and their verdicts; how many rows the forward ran (0: it failed)."""
        states: list[SlotSession] = [results[i].state for i in rows]
        drafts = [jobs[i].draft for i in rows]
        slots = [s.live_slot for s in states]
        feeds = [s.pending + list(d.tokens) for s, d in zip(states, drafts)]
        keeps = [len(d) + 1 for d in drafts]
        trees = [None if d.parents is None else feed_parents(d.parents, len(s.pending)) for s, d in zip(states, drafts)]
        static = (self.static is not None and all(t is None for t in trees)  # static shapes: chains only
                  and self.static.supports(len(rows), max(len(f) for f in feeds)))
        if static:
            try:
                out = self.static.forward(slots, feeds)
            except ModelError as exc:  # bad input (e.g. past the capacity): this group fails, nothing applied
                for i in rows:
                    results[i].error = exc
                return 0
            except Exception as exc:  # capture/replay failed: eager from now on, the reason kept
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                self.static_error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
                self.static.close()
                self.static = None
                static = False
        try:
            if static:
                logits = [out.logits[b, len(f) - k: len(f)] for b, (f, k) in enumerate(zip(feeds, keeps))]
                argmax = [out.argmax[b][len(f) - k: len(f)] for b, (f, k) in enumerate(zip(feeds, keeps))]
                forward_ms, prep_ms, kv_ms = out.forward_ms, out.prep_ms, 0.0
                padded, real = out.rows * max(len(f) for f in feeds), sum(len(f) for f in feeds)
            else:
                eager = self.cache.forward(slots, feeds, keeps, trees=trees if any(trees) else None)
                logits, argmax = eager.logits, None
                forward_ms, prep_ms, kv_ms = eager.forward_ms, eager.prep_ms, eager.kv_ms
                padded, real = eager.padded_tokens, eager.real_tokens
        except Exception as exc:  # nothing was applied: every row's session is as before
            for i in rows:
                results[i].error = exc
            return 0
        stats.static = static
        stats.forwards += 1
        stats.forward_ms += forward_ms
        stats.prep_ms += prep_ms
        stats.kv_ms += kv_ms
        stats.padded_tokens += padded
        stats.real_tokens += real
        for b, (i, s, d) in enumerate(zip(rows, states, drafts)):
            t1 = time.perf_counter()
            try:
                path = None
                if d.parents is not None:
                    path, emitted = accept_tree(logits[b][:, : self.vocab].float(), list(d.tokens), d.parents,
                                                jobs[i].params, d.seed, self.vocab)
                    accepted, nxt = len(path), emitted[-1]
                    s.apply_tree(d, path, nxt)
                elif argmax is not None and jobs[i].params.greedy:  # the argmax came back with the forward
                    accepted, nxt = accept_greedy(argmax[b], list(d.tokens))
                    s.apply(d, accepted, nxt)
                else:
                    accepted, nxt = accept_draft(logits[b][:, : self.vocab], d, jobs[i].params)
                    s.apply(d, accepted, nxt)
            except Exception as exc:
                s.release()  # half-applied: the owner drops this session (its edge resends the context)
                results[i].error = exc
                continue
            own = (time.perf_counter() - t1) * 1e3
            stats.accept_ms += own
            results[i].verdict = Verdict(accepted, nxt, prep_ms + forward_ms + own, path)
        return len(rows)
