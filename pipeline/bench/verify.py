"""`specstop bench verify`: one verify step for B sessions, batched on the slot cache vs the
per-request path (one DynamicCache forward per session), and what the slot bookkeeping costs.

Each session holds a real-text context (mixed lengths) and verifies a fixed-length draft of
random tokens every step, so nearly every step rolls back (the common case). Medians over
`steps` after a warm-up; these machines are shared and noisy, so read ratios, not digits.
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable

from nodes.models.batch_verify import BatchVerifier, VerifyJob
from nodes.models.loading import ModelPair, load_pair, set_threads
from nodes.models.sessions import TargetSession
from nodes.models.slots import SlotCache
from nodes.models.train_pair import corpus_documents
from schemas.rounds import Draft, SamplingParams


def _contexts(pair: ModelPair, n: int, lo: int, hi: int, rng: random.Random) -> list[list[int]]:
    docs = corpus_documents()
    out = []
    for i in range(n):
        ids = pair.tokenizer.encode(" ".join(docs[i % len(docs):i % len(docs) + 8]), add_special_tokens=False)
        out.append(ids[: rng.randint(lo, hi)])
    return out


def _median(fn: Callable[[], float], steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(fn() for _ in range(steps))


def _slot_step(pair: ModelPair, contexts: list[list[int]], length: int, steps: int, scattered: bool,
               rng: random.Random) -> dict:
    """Batched verify over the sessions' slots: consecutive slots, or every other one (gathered)."""
    verifier = BatchVerifier(pair.target, pair.vocab_size, max_slots=4 * len(contexts), max_len=4096)
    params = SamplingParams()
    spacers = []
    states = []
    for ctx in contexts:
        (res,), _ = verifier.run([VerifyJob(None, ctx, Draft([]), params)])
        states.append(res.state)
        if scattered:  # a held slot between every two: the batch's slots are not one range
            (gap,), _ = verifier.run([VerifyJob(None, ctx[:8], Draft([]), params)])
            spacers.append(gap.state)
    last = {}

    def step() -> float:
        jobs = [VerifyJob(s, None, Draft([rng.randrange(256) for _ in range(length)]), params) for s in states]
        t0 = time.perf_counter()
        results, stats = verifier.run(jobs)
        ms = (time.perf_counter() - t0) * 1e3
        assert stats.failed == 0 and stats.slot_rows == len(jobs)
        last.setdefault("runs", []).append(stats)
        return ms

    total = _median(step, steps)
    runs = last["runs"][2:]
    med = lambda f: round(statistics.median(f(s) for s in runs), 3)  # noqa: E731
    return {"step_ms": round(total, 3), "forward_ms": med(lambda s: s.forward_ms), "prep_ms": med(lambda s: s.prep_ms),
            "kv_ms": med(lambda s: s.kv_ms), "accept_ms": med(lambda s: s.accept_ms),
            "bookkeeping_ms": med(lambda s: s.prep_ms + s.kv_ms),
            "padded_tokens": runs[-1].padded_tokens, "real_tokens": runs[-1].real_tokens}


def _per_request_step(pair: ModelPair, contexts: list[list[int]], length: int, steps: int,
                      rng: random.Random) -> dict:
    sessions = [TargetSession(pair.target, ctx, pair.vocab_size) for ctx in contexts]

    def step() -> float:
        drafts = [Draft([rng.randrange(256) for _ in range(length)]) for _ in sessions]
        t0 = time.perf_counter()
        for s, d in zip(sessions, drafts):
            s.verify(d)
        return (time.perf_counter() - t0) * 1e3

    return {"step_ms": round(_median(step, steps), 3)}


def _bookkeeping_us(pair: ModelPair, n: int = 2000) -> dict:
    """Admit + evict and crop of one slot, alone (no forward), in microseconds."""
    cache = SlotCache(pair.target, max_slots=64, max_len=1024, slots=64)
    held = [cache.admit() for _ in range(32)]
    t0 = time.perf_counter()
    for _ in range(n):
        cache.evict(cache.admit())
    admit_evict = (time.perf_counter() - t0) / n * 1e6
    cache.forward([held[0]], [[1] * 64], [0])
    cache.crop(held[0], 63)
    t0 = time.perf_counter()
    for _ in range(n):
        cache.crop(held[0], 63)  # the same checks and write as any rollback
    crop = (time.perf_counter() - t0) / n * 1e6
    return {"admit_evict_us": round(admit_evict, 2), "crop_us": round(crop, 2), "grows": cache.grows}


def _prefill_stall(pair: ModelPair, chunk: int | None, others: int, prompt: int, length: int,
                   rng: random.Random) -> dict:
    """`others` sessions verify a round every batch while one `prompt`-token context arrives: how long
    their batches take while it is prefilled (whole in one batch, or `chunk` tokens a batch)."""
    verifier = BatchVerifier(pair.target, pair.vocab_size, max_slots=others + 4, max_len=prompt + 64,
                             prefill_chunk=chunk)
    params = SamplingParams()
    states = [r.state for r in verifier.run([VerifyJob(None, c, Draft([]), params)
                                             for c in _contexts(pair, others, 100, 200, rng)])[0]]
    draft = lambda: Draft([rng.randrange(256) for _ in range(length)])  # noqa: E731

    def batch(extra: list[VerifyJob]) -> tuple[float, list]:
        jobs = extra + [VerifyJob(s, None, draft(), params) for s in states]
        t0 = time.perf_counter()
        results, _ = verifier.run(jobs)
        return (time.perf_counter() - t0) * 1e3, results

    quiet = statistics.median(batch([])[0] for _ in range(5))
    ids = pair.tokenizer.encode(" ".join(corpus_documents()[:40]), add_special_tokens=False)
    long_job = VerifyJob(None, (ids * (prompt // max(1, len(ids)) + 1))[:prompt], draft(), params)
    times = []
    while True:
        ms, results = batch([long_job])
        times.append(ms)
        if not results[0].again:
            break
    return {"prefill_chunk": chunk, "batches_while_prefilling": len(times),
            "longest_batch_ms": round(max(times), 2), "median_batch_ms": round(statistics.median(times), 2),
            "quiet_batch_ms": round(quiet, 2), "stall_ms": round(max(times) - quiet, 2),
            "prompt_ready_after_ms": round(sum(times), 2)}


def bench_verify(draft=None, target=None, device: str = "cpu", threads: int = 1, batches: tuple[int, ...] = (1, 8, 32),
                 length: int = 4, context: tuple[int, int] = (100, 400), steps: int = 10, seed: int = 0) -> dict:
    set_threads(threads)
    pair = load_pair(draft, target, device=device, load_draft=False)
    rng = random.Random(seed)
    out: dict = {"threads": threads, "draft_length": length, "context_tokens": list(context), "steps": steps,
                 "batches": {}}
    for b in batches:
        contexts = _contexts(pair, b, *context, rng)
        per_request = _per_request_step(pair, contexts, length, steps, rng)
        slots = _slot_step(pair, contexts, length, steps, False, rng)
        row = {"per_request": per_request, "slots": slots,
               "per_request_ms_per_session": round(per_request["step_ms"] / b, 3),
               "slots_ms_per_session": round(slots["step_ms"] / b, 3),
               "speedup": round(per_request["step_ms"] / slots["step_ms"], 2)}
        if b > 1:
            row["slots_scattered"] = _slot_step(pair, contexts, length, steps, True, rng)
        out["batches"][str(b)] = row
    out["bookkeeping"] = _bookkeeping_us(pair)
    whole = _prefill_stall(pair, None, 8, 3000, length, rng)
    chunked = _prefill_stall(pair, 256, 8, 3000, length, rng)
    out["prefill_stall"] = {"others": 8, "prompt_tokens": 3000, "whole": whole, "chunked": chunked,
                            "stall_ratio_whole_vs_chunked": round(whole["stall_ms"] / max(chunked["stall_ms"], 1e-3), 2)}
    return out
