"""Draft many requests' rounds together: one forward per draft step over their slots.

`DraftRows` is the batched counterpart of `DraftSession.propose`: rows join between
steps (`add`), each `step` is one forward over the rows drafting; a row's first step
feeds its pending tokens, every later one the token it just drafted; a row leaves at the
step its stop rule fires or its length is reached, and the next step runs over the rows
left and those that joined. `draft_batch(cache, jobs)` drafts a fixed set of jobs to the
end. Each row samples exactly as `propose` does, from its own round generator
(`round_generators(seed)`): what a row draws depends only on its own logits and seed,
never on which rows share its steps. Hidden states are asked of the model only at steps
where a row's stop rule reads them (and handed to those rows only), the softmax a stop
rule needs only for rows that have one.

A job's failure (a bad length, its stop rule raising) is that job's only; a failed
forward fails the jobs still in the batch at that step (their sessions are then unusable:
their owners drop them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from nodes.models.errors import ModelError
from nodes.models.sampling import draft_distribution, round_generators, sample_sparse
from nodes.models.sessions import DraftSession, DraftStep, StopCallback
from nodes.models.slots import SlotCache, SlotCapacityError, SlotHolder
from nodes.models.static_forward import runner_for
from schemas.rounds import Draft, SamplingParams


class SlotDraftSession(SlotHolder, DraftSession):
    """A DraftSession whose K/V live in one slot of a shared SlotCache (same invariant: the slot
    covers every context token but `pending`; same `apply`). `propose` drafts it as a batch of one."""

    def __init__(self, cache: SlotCache, context: list[int], vocab_size: int,
                 params: SamplingParams = SamplingParams(), prefill_chunk: int | None = None):
        # not DraftSession.__init__: that builds a DynamicCache; the slot replaces it
        self.model, self.vocab_size, self.params = cache.model, vocab_size, params
        self.tokens: list[int] = list(context)
        self.pending: list[int] = list(context[-1:])
        self._last_draft: list[int] = []
        self.tokens_fed = max(len(context) - 1, 0)
        self._open_slot(cache, context, prefill_chunk)  # longer: the owner calls prefill_step until prefilled

    def _crop_to(self, length: int) -> None:
        self.slot_cache.crop(self.live_slot, length)

    def propose(self, max_len: int, seed: int = 0, stop: StopCallback | None = None, hidden: bool = False) -> Draft:
        (res,), _ = draft_batch(self.slot_cache, [DraftJob(self, max_len, seed, stop, hidden)])
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
    first_rows: int = 0            # rows in its first step (the batch it drafted in)
    forward_ms: float = 0.0        # the steps it took part in: model calls (K/V writes and reads included)
    bookkeeping_ms: float = 0.0    # ... ids/positions/masks and K/V writes and reads
    sample_ms: float = 0.0         # ... every row's sampling and stop rule


@dataclass
class DraftStats:
    """What the steps cost (rows per step change as rows join and leave)."""

    jobs: int = 0
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
    key: Any
    job: DraftJob
    gen: torch.Generator
    feed: list[int]
    joined: float
    result: DraftResult
    tokens: list[int] = field(default_factory=list)
    q_ids: list[list[int]] | None = None
    q_probs: list[list[float]] | None = None
    stopped: bool = False


class DraftRows:
    """The rows drafting on one slot cache; rows join between steps and leave at the step they end.

    `graphs` (None: on for a CUDA cache): steps run at static shapes, replayed as CUDA graphs on a GPU
    (nodes/models/static_forward.py); greedy rows take their token from the argmax that comes back with the
    replay. A failed capture or replay turns it off for this cache (`static_error` says why)."""

    def __init__(self, cache: SlotCache, graphs: bool | None = None):
        self.cache = cache
        self.rows: list[_Row] = []
        self.stats = DraftStats()
        self.graphs = cache.device.type == "cuda" if graphs is None else graphs
        if getattr(cache, "_static_error", None):
            self.graphs = False

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(self, rows: list[_Row], want_hidden: bool) -> _StepOut:
        out = _static_step(self, rows, want_hidden) if self.graphs else None
        return out if out is not None else _eager_step(self.cache, rows, want_hidden)

    def add(self, job: DraftJob, key: Any = None) -> DraftResult | None:
        """Join the next step; a result at once when the job has nothing to draft or cannot draft here."""
        self.stats.jobs += 1
        s = job.session
        try:
            if job.length < 0:
                raise ModelError(f"draft length must be >= 0, got {job.length}")
            if s.slot_cache is not self.cache:
                raise ModelError("draft session is not on this slot cache")
            s.live_slot  # noqa: B018 (raises when released)
            if any(r.job.session is s for r in self.rows):
                raise ModelError("draft session is already drafting")
        except ModelError as exc:
            return DraftResult(None, error=exc)
        if job.length == 0:  # a target-only round: nothing to draft
            s._last_draft = []
            return DraftResult(Draft([], job.seed))
        greedy = s.params.greedy
        self.rows.append(_Row(key, job, round_generators(job.seed)[0], list(s.pending), time.perf_counter(),
                              DraftResult(None), q_ids=None if greedy else [], q_probs=None if greedy else []))
        return None

    def step(self) -> list[tuple[Any, DraftResult]]:
        """One forward over every row; (key, result) of the rows that left (finished or failed)."""
        t0 = time.perf_counter()
        left: list[tuple[Any, DraftResult]] = []
        rows = []
        for r in self.rows:  # one that would outgrow its slot fails alone
            (rows if _fits(self.cache, r) else left).append(r)
        left = [(r.key, r.result) for r in left]
        self.rows = rows
        if not rows:
            return left
        want_hidden = any(r.job.hidden and r.job.stop is not None for r in rows)
        try:
            out = self._forward(rows, want_hidden)
        except Exception as exc:  # nothing written: every row fails (its session is dropped)
            for r in rows:
                r.result.error = exc
            self.rows = []
            return left + [(r.key, r.result) for r in rows]
        t1 = time.perf_counter()
        st = self.stats
        st.steps += 1
        st.rows_per_step.append(len(rows))
        st.forward_ms += out.forward_ms
        st.prep_ms += out.prep_ms
        st.kv_ms += out.kv_ms
        st.padded_tokens += out.padded_tokens
        st.real_tokens += out.real_tokens
        staying: list[_Row] = []
        leaving: list[_Row] = []
        for b, r in enumerate(rows):
            h = out.hidden[b] if want_hidden and r.job.hidden else None
            try:
                done = _step(r, out.logits[b], h, out.argmax[b] if out.argmax is not None else None)
            except Exception as exc:  # this row's stop rule (or sampling) failed: this job only
                r.result.error = exc
                done = True
            (leaving if done else staying).append(r)
        self.rows = staying
        end = time.perf_counter()
        sample_ms = (end - t1) * 1e3
        st.sample_ms += sample_ms
        st.total_ms += (end - t0) * 1e3
        for r in rows:
            res = r.result
            res.first_rows = res.first_rows or len(rows)
            res.steps += 1
            res.forward_ms += out.forward_ms
            res.bookkeeping_ms += out.prep_ms + out.kv_ms
            res.sample_ms += sample_ms
        for r in leaving:
            if r.result.error is None:
                r.result.draft = _finish(r, (end - r.joined) * 1e3)
            left.append((r.key, r.result))
        return left


@dataclass
class _StepOut:
    """One draft step's forward: per row, the logits [vocab] and hidden state of its last fed position."""

    logits: list[torch.Tensor]
    hidden: list[torch.Tensor] | None
    argmax: list[int] | None   # greedy tokens when the static path computed them with the forward
    forward_ms: float
    prep_ms: float
    kv_ms: float
    padded_tokens: int
    real_tokens: int


def _static_step(self: DraftRows, rows: list[_Row], want_hidden: bool) -> _StepOut | None:
    """The step at static shapes, or None (not supported here, or the static path failed and is now off)."""
    feeds = [r.feed for r in rows]
    vocab = rows[0].job.session.vocab_size
    try:
        runner = runner_for(self.cache, vocab)
        if not runner.supports(len(rows), max(len(f) for f in feeds)) or runner.vocab != vocab:
            return None
        out = runner.forward([r.job.session.live_slot for r in rows], feeds, hidden=want_hidden)
    except ModelError:
        raise
    except Exception as exc:  # capture/replay failed: eager from now on for this cache
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        self.cache._static_error = f"{type(exc).__name__}: {first}"
        self.graphs = False
        return None
    n = [len(f) - 1 for f in feeds]
    return _StepOut([out.logits[b, i] for b, i in enumerate(n)],
                    [out.hidden[b, i] for b, i in enumerate(n)] if want_hidden else None,
                    [out.argmax[b][i] for b, i in enumerate(n)], out.forward_ms, out.prep_ms, 0.0,
                    out.rows * max(len(f) for f in feeds), sum(len(f) for f in feeds))


def _eager_step(cache: SlotCache, rows: list[_Row], want_hidden: bool) -> _StepOut:
    out = cache.forward([r.job.session.live_slot for r in rows], [r.feed for r in rows], [1] * len(rows),
                             hidden=want_hidden)
    return _StepOut([lg[-1] for lg in out.logits], [h[-1] for h in out.hidden] if want_hidden else None, None,
                    out.forward_ms, out.prep_ms, out.kv_ms, out.padded_tokens, out.real_tokens)


def draft_batch(cache: SlotCache, jobs: list[DraftJob]) -> tuple[list[DraftResult], DraftStats]:
    """Draft every job to its end; results in job order. Sessions must be live slots of `cache`, each once."""
    rows = DraftRows(cache)
    results: list[DraftResult | None] = [rows.add(job, i) for i, job in enumerate(jobs)]
    while rows:
        for i, res in rows.step():
            results[i] = res
    return results, rows.stats


def _fits(cache: SlotCache, r: _Row) -> bool:
    need = cache.length(r.job.session.live_slot) + len(r.feed)
    if need > cache.max_len:
        r.result.error = SlotCapacityError(f"context of {need} tokens exceeds the draft slot capacity of "
                                           f"{cache.max_len}")
        return False
    return True


def _step(r: _Row, row_logits: torch.Tensor, hidden: torch.Tensor | None, argmax: int | None = None) -> bool:
    """One drafted token for row `r`, exactly as DraftSession.propose draws it (`argmax`: the greedy token,
    when it came back with the forward); True when the row leaves (its stop rule fired or its length is
    reached)."""
    s, job = r.job.session, r.job
    pos = len(r.tokens) + 1
    logits = row_logits[: s.vocab_size]
    if s.params.greedy:
        probs = torch.softmax(logits.float(), dim=-1) if job.stop is not None else None
        tok = argmax if argmax is not None else int(torch.argmax(logits))
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
    s.tokens_fed += len(s.pending) + len(r.tokens) - 1
    s._last_draft = r.tokens
    return Draft(r.tokens, r.job.seed, r.q_ids, r.q_probs, elapsed_ms, r.stopped)
