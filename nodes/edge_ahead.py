"""Rounds in flight through the edge worker (`specstop edge --ahead R`, docs/pipelining.md).

While a round is in flight the edge drafts the continuation that assumes it is kept (its L tokens
all accepted and the target's next token equal to the draft's own prediction after them) and sends
it at once, as an `ahead_draft` naming that basis (schemas/ahead.py), up to R rounds per request.
Verdicts are applied once and in round order (nodes/protocol/pipelining.EdgeWindow): the oldest
round in flight is adopted by the request (`EdgeRequest.adopt`) and answered through the worker's
usual exchange, so retries, failover, resends with the context and every check on a verdict are the
chain round's. The first verdict that does not keep its round voids every round after it: the edge
drops their answers and redrafts on the verdict; the verifier, deciding from the same verdicts,
drops them without compute (nodes/protocol/verifier_table). Round numbers of voided rounds are used
again by the rounds drafted in their place: the verifier never verified them, so nothing is on
record under those numbers.

With a fixed tree shape (`--tree DxW --ahead R`) each round is a draft tree (nodes/models/tree_verify,
as `--tree` alone); the stream goes on along its spine, and a round is kept when its whole spine and
the next token hold, so later rounds are built on the spine and the prediction after it. Near the
request's end, when fewer tokens are wanted than the spine is deep, the round is a chain. Under
`--tree auto --ahead R` each round's shape is a spine (chains included) that the edge's learner
(nodes/protocol/tree_shape.TreeShaper.choose_ahead) prices cheapest with R rounds in flight, and
every verified tree round teaches it, as one-round-per-trip tree rounds do.

Rounds drafted ahead go to the session's verifier only (they carry no context): before a verifier
holds the session (its first round went to the queue group) one round is in flight. The draft
model runs on the worker's model thread, never inline, so verdicts keep arriving while it drafts.
A round's `round_ms` is its share of the request's critical path (from the later of its draft's
start and the previous verdict applied, to its own verdict): over a request they add up to its wall
time, so ms/token stays what a client sees.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from control import ControlError, RoundContext
from control.trees import Tree
from nodes.models.pipelined import DraftStream
from nodes.protocol.pipelining import EdgeWindow, SentRound
from nodes.protocol.request import EdgeRequest, RoundPlan, Send
from nodes.protocol.tree_shape import AUTO
from nodes.protocol.timing import measured_round_times
from schemas import subjects
from schemas.ahead import AheadDraftMsg, encode_ahead
from schemas.messages import DraftMsg
from schemas.rounds import Draft, round_seed
from schemas.trees import encode_round

if TYPE_CHECKING:
    from nodes.edge import EdgeWorker, Live


@dataclass
class Flight:
    """A round sent and not yet applied."""

    sent: SentRound       # the window's record: basis and the draft's prediction after the round
    draft: Draft
    plan: RoundPlan
    step: Send | None     # a round sent by `EdgeRequest.send` (the oldest, its basis known); None: sent ahead
    msg: DraftMsg         # its first attempt's message (adopted when it becomes the oldest)
    to: str | None        # the verifier it went to (None: the queue group)
    answer: asyncio.Task  # its first attempt: (reply, link ms)
    out: asyncio.Event    # set when its first attempt is on the wire (the next round waits for it)
    drafting_began: float
    sent_at: float
    alone: bool           # nothing was in flight when it was sent: its round trip measures the link
    sample: Any
    draft_real_ms: float | None  # with device emulation: what this machine spent (draft_ms is the device's)


class AheadRounds:
    """One request's rounds in flight on an EdgeWorker."""

    def __init__(self, worker: "EdgeWorker", r: EdgeRequest, live: "Live") -> None:
        self.w, self.r, self.live = worker, r, live
        self.window = EdgeWindow(worker.cfg.ahead)
        self.flights: deque[Flight] = deque()
        self.stream: DraftStream | None = None
        self.last_applied = time.perf_counter()

    async def run(self) -> None:
        w, r = self.w, self.r
        self.stream, _ = await w.run_model(DraftStream, w.pair.draft, list(r.context), w.pair.vocab_size, r.params,
                                           r.req.seed)
        self.last_applied = time.perf_counter()
        try:
            while not r.done:
                if self.live.stop_reason is not None:
                    raise asyncio.CancelledError
                while self._room() and await self._send_next():
                    if self.flights[0].answer.done():  # apply a verdict that came while drafting first
                        break
                await self._apply_oldest()
        finally:
            for f in self.flights:
                _drop(f.answer)
            self.flights.clear()
        w.log.info("request_done", request_id=r.req.request_id, rounds=r.round, tokens=len(r.out),
                   finish_reason=r.finish_reason, policy=r.policy_spec, retries=r.retries, ahead=w.cfg.ahead)

    # --- sending --------------------------------------------------------------------
    def _wanted(self) -> int:
        """Tokens still wanted if every round in flight is kept (each brings its drafts and one more)."""
        return self.r.req.max_new_tokens - len(self.r.out) - sum(
            (f.sent.drafted if f.sent is not None else 0) + 1 for f in self.flights)

    def _room(self) -> bool:
        if not self.flights:
            return True
        if self.window.full or self.r.verifier is None or self.flights[0].answer.done():
            return False
        if self.flights[-1].to != self.r.verifier:  # the session moved: its rounds ahead are not there
            return False
        stream_tail = self.stream.tokens[len(self.r.context):]
        return self._wanted() >= 2 and not any(t in self.r.eos_ids for t in stream_tail)

    def _plan(self, round_no: int, wanted: int) -> tuple[RoundPlan, Any]:
        """The policy's length for a round (1..max_length: a round drafted ahead has tokens), its seed
        fixed by the round number as a chain round's is."""
        w, r = self.w, self.r
        sample = w.channel.sample()
        ctx = RoundContext(w.delay.ms, sample.state)
        policy, version = w.policies.acting(r.policy_spec)
        try:
            length = int(policy.choose(ctx))
        except (ControlError, ValueError) as exc:  # a policy that cannot choose must not fail the request
            w.log.warning("policy_error", policy=r.policy_spec, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            policy, version = w.policies.fallback, 0
            length = int(policy.choose(ctx))
        length = max(0, min(w.cfg.max_length, wanted - 1, length))  # 0: a target-only round, never sent ahead
        return RoundPlan(length, round_seed(r.req.seed, round_no), ctx, version), sample

    async def _send_next(self) -> bool:
        """Draft the next round on the stream's end (and the draft's prediction after it) and send it;
        False when the policy wants a target-only round, which waits until nothing is in flight."""
        w, r, stream = self.w, self.r, self.stream
        round_no = r.round + len(self.flights)
        plan, sample = self._plan(round_no, self._wanted())
        if plan.length == 0 and self.flights:
            return False
        began = time.perf_counter()
        tree = w.cfg.tree if isinstance(w.cfg.tree, Tree) else None
        if w.cfg.tree == AUTO and plan.length and self._wanted() >= 2:
            tree = w.trees.choose_ahead(w.delay.ms, self._wanted() - 1, w.cfg.ahead)
        depth = max(tree.depths()) if tree is not None else 0
        if tree is not None and plan.length and self._wanted() - 1 >= depth:
            (nodes, _), _ = await w.run_model(stream.draft_tree, tree)
            (pred, _, _), _ = await w.run_model(stream.draft, 1)
            d = Draft(nodes[1:], plan.seed, parents=list(tree.parents))
            L, predicted = depth, pred[0]
        else:
            n = plan.length + 1 if plan.length else 0  # the extra token: the prediction a round ahead builds on
            (tokens, q_ids, q_probs), _ = await w.run_model(stream.draft, n)
            L = plan.length
            d = Draft(tokens[:L], plan.seed, None if q_ids is None else q_ids[:L],
                      None if q_probs is None else q_probs[:L])
            predicted = tokens[L] if n else -1
        d.draft_ms = (time.perf_counter() - began) * 1e3
        draft_real_ms = await w._pace(d, 0.0)
        basis = self.window.next_basis()
        alone = not self.flights
        if alone:  # its basis is known: the request's own round, sent as a chain draft
            step = r.send(d, time.monotonic(), plan)
            msg, to, data = step.msg, r.verifier, encode_round(step.msg, d.parents)
        else:
            step, msg, to = None, r.ahead_msg(d, round_no), r.verifier
            parents = None if d.parents is None else tuple(d.parents)
            data = encode_ahead(AheadDraftMsg(msg, basis.assumed_next, parents))
        sent = self.window.send(L, predicted) if L else None
        subject = subjects.draft(r.rules.edge_id, to)
        timeout = r.rules.request_timeout_s
        before = self.flights[-1].out if self.flights else None
        out = asyncio.Event()
        task = asyncio.ensure_future(self._fly(subject, data, timeout, sample, before, out))
        self.flights.append(Flight(sent, d, plan, step, msg, to, task, out, began, time.perf_counter(), alone,
                                   sample, draft_real_ms))
        return True

    async def _fly(self, subject: str, data: bytes, timeout_s: float, sample: Any, before: asyncio.Event | None,
                   out: asyncio.Event) -> tuple[Any, float]:
        """One attempt over the emulated link: (the reply, link ms slept). Rounds go on the wire in
        order, as on a real link (the emulated sleeps may end out of order): a round that overtook the
        one before it would find nothing to wait behind at the verifier."""
        link_ms = await self.w.link.sleep(sample.up_ms)
        if before is not None:
            await before.wait()
        out.set()  # the request below publishes before it first yields, so the next round's wait ends after
        answer = await self.w.nc.request(subject, data, timeout=timeout_s)
        return answer, link_ms + await self.w.link.sleep(sample.down_ms)

    # --- applying --------------------------------------------------------------------
    async def _apply_oldest(self) -> None:
        w, r = self.w, self.r
        f = self.flights.popleft()
        step = f.step if f.step is not None else r.adopt(f.draft, f.plan, f.msg, time.monotonic())
        verdict, link_ms, stall_ms = await w._exchange(r, f.draft, f.sample, (step, f.answer, f.sent_at))
        now = time.perf_counter()
        times = measured_round_times((now - max(f.drafting_began, self.last_applied)) * 1e3, f.draft.draft_ms, 0.0,
                                     link_ms, stall_ms, f.draft_real_ms)
        self.last_applied = now
        if f.alone and not stall_ms:  # a round trip with nothing ahead of it at the verifier: the link's
            w.delay.add(max(0.0, (now - f.sent_at) * 1e3 - verdict.verify_ms - verdict.queue_ms) / 2)
        w.placement.observe(verdict.verifier_id, verdict.queue_ms, time.monotonic())
        kept = False
        if f.sent is not None:
            applied = self.window.on_verdict(f.sent.round_id, verdict.accepted, verdict.next_token)
            kept = bool(applied) and applied[-1].kept
        w.timing_seq += 1
        rec = r.complete(verdict, times, f.sample.state, f.sample.one_way_ms, w.timing_seq)
        if f.draft.parents is not None:  # --tree auto learns from every verified tree round; its draft
            # time includes the prediction's step, as every round drafted ahead pays it
            w.trees.observe(f.draft.parents, list(verdict.path or []), f.draft.draft_ms, verdict.verify_ms,
                            prefilled=rec.timing.round == 0 or rec.timing.context_resent)
        in_flight = len(self.flights) + 1  # this round and the ones sent after it
        if not kept or (self.flights and self.flights[0].to != r.verifier):
            self._void()
        await w._deliver(self.live, rec, {"draft_batch_size": 1, "in_flight": in_flight, "kept": kept})

    def _void(self) -> None:
        """Drop the rounds in flight (the verifier drops them too, from the same verdicts) and bring the
        draft stream back to the request's context."""
        for f in self.flights:
            _drop(f.answer)
        self.flights.clear()
        self.window = EdgeWindow(self.w.cfg.ahead)
        stream, context = self.stream, self.r.context
        n = 0
        limit = min(len(stream.tokens), len(context))
        while n < limit and stream.tokens[n] == context[n]:
            n += 1
        stream.truncate(n)
        stream.tokens.extend(context[n:])


def _drop(task: asyncio.Task) -> None:
    """Forget a round's attempt: cancelled, or its outcome read (a timeout nobody awaits is no error)."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()
