"""The whole speculative loop on one screen (in-process: both halves here).

The pipeline runs the same two halves in different processes; this module is
the reference for what one request does, round by round.
"""
from __future__ import annotations

from control import Policy, RoundContext, RoundOutcome
from nodes.detokenize import IncrementalDetokenizer
from nodes.models.errors import ModelError
from nodes.models.loading import ModelPair
from nodes.models.sessions import DraftSession, TargetSession
from schemas.rounds import GenerationResult, SamplingParams, round_seed


def check_request(prompt_ids: list[int], max_new_tokens: int, vocab_size: int) -> None:
    if not prompt_ids:
        raise ModelError("prompt is empty")
    if max_new_tokens < 1:
        raise ModelError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise ModelError(f"prompt has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


def finish(new: list[int], out: list[int], max_new: int, eos: frozenset[int]) -> str | None:
    """Append `new` to `out`, cutting at EOS (not emitted) or the length limit."""
    for t in new:
        if t in eos:
            return "eos"
        out.append(t)
        if len(out) >= max_new:
            return "length"
    return None


def speculative_generate(pair: ModelPair, prompt_ids: list[int], max_new_tokens: int, policy: Policy,
                         params: SamplingParams = SamplingParams(), seed: int = 0,
                         delay_ms: float = 0.0) -> GenerationResult:
    check_request(prompt_ids, max_new_tokens, pair.vocab_size)
    draft = DraftSession(pair.draft, prompt_ids, pair.vocab_size, params)
    target = TargetSession(pair.target, prompt_ids, pair.vocab_size, params)
    res = GenerationResult([], "", 0)
    ctx = RoundContext(delay_ms=delay_ms)
    reason = None
    while reason is None:
        length = policy.choose(ctx)
        stop = (lambda pos, prob, _h: policy.should_stop(ctx, pos, prob))
        d = draft.propose(length, seed=round_seed(seed, res.rounds), stop=stop)
        v = target.verify(d)
        new = draft.apply(v)
        policy.observe(RoundOutcome(len(d), v.accepted, d.draft_ms + v.verify_ms + 2 * delay_ms, ctx))
        res.rounds += 1
        res.lengths_per_round.append(len(d))
        res.accepted_per_round.append(v.accepted)
        res.draft_ms += d.draft_ms
        res.verify_ms += v.verify_ms
        reason = finish(new, res.token_ids, max_new_tokens, pair.eos_ids)
    res.finish_reason = reason
    res.text = decode(pair, res.token_ids)
    return res


def target_only_generate(pair: ModelPair, prompt_ids: list[int], max_new_tokens: int,
                         params: SamplingParams = SamplingParams(), seed: int = 0) -> GenerationResult:
    """Plain autoregressive target decoding (KV cache, batch 1): the reference output."""
    check_request(prompt_ids, max_new_tokens, pair.vocab_size)
    target = TargetSession(pair.target, prompt_ids, pair.vocab_size, params)
    res = GenerationResult([], "", 0)
    reason = None
    while reason is None:
        v = target.step(seed=round_seed(seed, res.rounds))
        res.rounds += 1
        res.accepted_per_round.append(0)
        res.lengths_per_round.append(0)
        res.verify_ms += v.verify_ms
        reason = finish([v.next_token], res.token_ids, max_new_tokens, pair.eos_ids)
    res.finish_reason = reason
    res.text = decode(pair, res.token_ids)
    return res


def decode(pair: ModelPair, ids: list[int]) -> str:
    if pair.tokenizer is None:  # bare models (tests on tiny vocabularies)
        return ""
    det = IncrementalDetokenizer(pair.tokenizer)
    return det.feed(ids) + det.flush()
