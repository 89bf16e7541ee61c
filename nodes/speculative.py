"""The whole speculative loop on one screen (in-process: both halves here).

The same round protocol objects as the pipeline (`EdgeRequest` on the edge
side, `SessionTable` on the verifier side) and the same rules for the acting
policy, its stop rule (`protocol.acting`) and the round's time
(`protocol.timing`), wired to the two models directly instead of to NATS: this
is the reference for what one request does, round by round. Target-only
decoding is the same loop with the policy of length 0. A policy that cannot
choose fails the call here (the edge falls back to a fixed length instead).
"""
from __future__ import annotations

from typing import Callable

import time

from control import ControlError, Policy, RoundContext, make_policy
from nodes.detokenize import IncrementalDetokenizer
from nodes.models.errors import ModelError
from nodes.models.head import head_for
from nodes.models.loading import ModelPair
from nodes.models.sessions import DraftSession, verify_round
from nodes.protocol.acting import HeadSlot, plan_round
from nodes.protocol.request import Accepted, EdgeRequest, RoundRules
from nodes.protocol.timing import modeled_round_times
from nodes.protocol.verifier_table import Outcome, SessionTable, TableConfig
from schemas.codec import Limits
from schemas.messages import GenerateRequest
from schemas.rounds import Draft, GenerationResult, SamplingParams

IN_PROCESS = "in-process"


def check_request(prompt_ids: list[int], max_new_tokens: int, vocab_size: int) -> None:
    if not prompt_ids:
        raise ModelError("prompt is empty")
    if max_new_tokens < 1:
        raise ModelError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise ModelError(f"prompt has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


def speculative_generate(pair: ModelPair, prompt_ids: list[int], max_new_tokens: int, policy: Policy,
                         params: SamplingParams = SamplingParams(), seed: int = 0,
                         delay_ms: float = 0.0,
                         on_round: Callable[[list[int]], None] | None = None) -> GenerationResult:
    """`on_round`, if given, sees the tokens generated so far after each round (streaming, progress)."""
    check_request(prompt_ids, max_new_tokens, pair.vocab_size)
    heads = HeadSlot(lambda: head_for(pair))  # loaded once per call, at the first round that needs it
    try:
        heads.check(policy)
    except ControlError as exc:
        raise ModelError(str(exc)) from None
    req = GenerateRequest(IN_PROCESS, prompt_ids=None, prompt="-", max_new_tokens=max_new_tokens,
                          temperature=params.temperature, top_p=params.top_p, seed=seed, policy=policy.spec)
    edge = EdgeRequest(req, prompt_ids, RoundRules(IN_PROCESS, max_length=policy.max_length), policy.spec,
                       pair.eos_ids)
    table = SessionTable(TableConfig(IN_PROCESS), Limits(max_context_tokens=1 << 30))
    draft_model: DraftSession | None = None
    res = GenerationResult([], "", 0)
    while not edge.done:
        plan = plan_round(edge, policy, 0, RoundContext(delay_ms=delay_ms), heads).plan
        if plan.length and draft_model is None:  # created at the first drafted round (never for target-only)
            draft_model = DraftSession(pair.draft, edge.context, pair.vocab_size, params)
        stop, hidden = heads.stop_rule(policy, plan.context)
        d = draft_model.propose(plan.length, plan.seed, stop, hidden) if draft_model else Draft([], plan.seed)
        send = edge.send(d, time.monotonic())
        adm = table.admit(send.msg, "edge", time.monotonic())
        job = adm.compute
        assert job is not None, adm.detail
        state, v, prefill_ms = verify_round(pair.target, pair.vocab_size, job.session.state,
                                            job.session.tokens if job.rebuild else None, job.msg.to_draft(),
                                            SamplingParams(params.temperature, params.top_p))
        [reply] = table.finish(job.session, Outcome(v.accepted, v.next_token, v.verify_ms + prefill_ms, 0.0),
                               state, time.monotonic())
        step = edge.on_verdict(reply.msg, time.monotonic())
        assert isinstance(step, Accepted), step
        if draft_model is not None:
            draft_model.apply(v)
        times = modeled_round_times(d.draft_ms, step.verdict.verify_ms, step.verdict.queue_ms, delay_ms)
        rec = edge.complete(step.verdict, times, None, delay_ms, 0)
        policy.observe(rec.outcome)
        res.rounds += 1
        res.lengths_per_round.append(len(d))
        res.accepted_per_round.append(v.accepted)
        res.draft_ms += d.draft_ms
        res.verify_ms += v.verify_ms
        if on_round is not None:
            on_round(edge.out)
    res.token_ids = edge.out
    res.finish_reason = edge.finish_reason or "length"
    res.text = decode(pair, res.token_ids)
    return res


def target_only_generate(pair: ModelPair, prompt_ids: list[int], max_new_tokens: int,
                         params: SamplingParams = SamplingParams(), seed: int = 0) -> GenerationResult:
    """Plain autoregressive target decoding (KV cache, batch 1): the reference output."""
    return speculative_generate(pair, prompt_ids, max_new_tokens, make_policy("target-only"), params, seed)


def decode(pair: ModelPair, ids: list[int]) -> str:
    if pair.tokenizer is None:  # bare models (tests on tiny vocabularies)
        return ""
    det = IncrementalDetokenizer(pair.tokenizer)
    return det.feed(ids) + det.flush()
