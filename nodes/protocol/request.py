"""One generate request on the edge, round by round, with no transport in it.

Per round: `plan` asks the policy for a length (0 = target-only), the caller
drafts, `send` builds the draft message and says where it goes; every answer
(or its absence) goes back in through `on_verdict` / `on_error` /
`on_timeout` / `on_no_responders`, each of which returns what to do next:
`Accepted` (apply it), `Send` (try again, maybe elsewhere, maybe after a
pause) or `Failed` (give up with an error naming what was unreachable).
`complete` turns the accepted verdict into the client's chunk, the timing
event and the policy outcome.

Rules (README, "Round protocol"):
  * a verdict is accepted only for the exact request, round and attempt in
    flight, and only if it fits the draft (accepted <= drafted; a tree round's
    path goes down the tree that was sent, nodes/protocol/tree.path_error);
  * a lost reply is retried once on the same verifier (it answers a round it
    already applied from its cache); then, or at once when nobody listens
    there, the full context goes to the verifier queue group, so the request
    continues on any verifier;
  * after a timeout, when heartbeats name another live verifier (`elsewhere`),
    the retry takes the context straight to it instead (the one that timed out,
    or the queue group, which may pick it again, may be stalled); a round whose
    verifier's heartbeat stopped moves there before its timeout
    (`on_holder_gone`). Either way the new verifier builds the session from the
    context and the old one is left behind (a final message at the end), so
    nothing is applied twice;
  * with no verifier reachable the round waits (backoff) up to
    `failover_deadline_s`, then the request fails with `no_verifier`;
  * verifiers this request left behind get a final message at the end.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from control import Policy, RoundContext, RoundOutcome
from nodes.protocol.timing import RoundTimes, network_ms, outcome_of
from nodes.protocol.tree import draft_steps, path_error, round_tokens
from schemas import subjects
from schemas.codec import Float32Array, Int32Array
from schemas.messages import (
    BAD_MESSAGE, CONFLICT, DRAINING, NO_VERIFIER, OVERLOADED, RESEND_CONTEXT, VOIDED, DraftMsg, ErrorMsg,
    GenerateRequest, TimingEvent, TokenChunk, VerdictMsg,
)
from schemas.rounds import Draft, SamplingParams, round_seed


@dataclass(frozen=True)
class RoundRules:
    edge_id: str
    max_length: int = 8
    request_timeout_s: float = 10.0    # how long one attempt waits for its verdict
    failover_deadline_s: float = 30.0  # how long a round may go without a verdict before the request fails
    backoff_min_s: float = 0.05
    backoff_max_s: float = 1.0


@dataclass
class RoundPlan:
    length: int      # 0: target-only round
    seed: int
    context: RoundContext
    policy_version: int


@dataclass
class Send:
    """Publish `msg` to `subject` (as a request: one reply) after sleeping `wait_s`."""

    subject: str
    msg: DraftMsg
    wait_s: float
    timeout_s: float


@dataclass
class Accepted:
    verdict: VerdictMsg


@dataclass
class Failed:
    code: str
    message: str


@dataclass
class RoundRecord:
    new_tokens: list[int]  # what the client gets this round (cut at EOS / the limit)
    chunk: TokenChunk
    timing: TimingEvent
    outcome: RoundOutcome
    done: bool


class Detokenizer(Protocol):
    def feed(self, ids: list[int]) -> str: ...
    def flush(self) -> str: ...
    def flush_all(self) -> str: ...


def finish(new: list[int], out: list[int], max_new: int, eos: frozenset[int]) -> str | None:
    """Append `new` to `out`, cutting at EOS (not emitted) or the length limit; the finish reason or None."""
    for t in new:
        if t in eos:
            return "eos"
        out.append(t)
        if len(out) >= max_new:
            return "length"
    return None


@dataclass
class EdgeRequest:
    req: GenerateRequest
    prompt_ids: list[int]
    rules: RoundRules
    policy_spec: str
    eos_ids: frozenset[int] = frozenset()
    detok: Detokenizer | None = None
    context: list[int] = field(init=False)    # what a verifier must hold: prompt + every emitted token
    out: list[int] = field(default_factory=list)
    round: int = 0
    attempt: int = 0
    verifier: str | None = None               # sticky verifier of the session, None: queue group next
    placed: bool = False                      # the first round goes to `verifier` (chosen by the edge), context included
    left_behind: list[str] = field(default_factory=list)  # verifiers that may still hold a session
    finish_reason: str | None = None
    retries: int = 0
    _draft: Draft | None = None
    _plan: RoundPlan | None = None
    _pending: DraftMsg | None = None
    _failing_since: float | None = None
    _context_resent: bool = False
    _holder_unknown: bool = False  # a context went to the queue group and no verdict named who took it
    _retried_to_queue: bool = False  # a retry went to the queue group: verifiers we never heard from may hold it
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # nonce of this request's sessions

    def __post_init__(self) -> None:
        self.context = list(self.prompt_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(self.req.temperature, self.req.top_p)

    # --- one round -----------------------------------------------------------------
    def plan(self, policy: Policy, version: int, ctx: RoundContext) -> RoundPlan:
        """The policy's length for this round, kept within [0, max_length] whatever the policy says, and
        never more than the tokens still wanted need: with r to go, r - 1 drafted tokens and the bonus
        token finish the request, and a longer draft only spends draft and verify time on tokens that
        would be cut (a whole round's worth at the end of every short request)."""
        wanted = self.req.max_new_tokens - len(self.out)
        length = max(0, min(self.rules.max_length, wanted - 1, int(policy.choose(ctx))))
        self._plan = RoundPlan(length, round_seed(self.req.seed, self.round), ctx, version)
        return self._plan

    @property
    def tree_parents(self) -> list[int] | None:
        """The round in flight's tree shape (None: a chain round): its attempts go out as tree drafts."""
        return None if self._draft is None else self._draft.parents

    def place(self, verifier_id: str) -> None:
        """Start the session on this verifier instead of wherever the queue group sends it (the edge's
        placement: the least loaded verifier it knows). Only before the first round."""
        if self.round == 0 and self._pending is None and self.verifier is None:
            self.verifier, self.placed = verifier_id, True

    def send(self, draft: Draft, now: float, plan: RoundPlan | None = None) -> Send:
        """The round's first attempt: to the sticky verifier, or with the context to the queue group
        (or, for a placed session's first round, to the verifier the edge chose). `plan`: the round's
        plan when it was not made by `plan` (rounds in flight plan their own)."""
        if plan is not None:
            self._plan = plan
        self._draft, self.attempt, self._failing_since = draft, 0, None
        self._context_resent = False
        opening = self.round == 0 and self.placed and self.verifier is not None
        first_round = self.round == 0 and (self.verifier is None or opening)
        with_context = self.verifier is None or opening
        msg = DraftMsg.from_draft(draft, request_id=self.req.request_id, round=self.round, attempt=0,
                                  edge_id=self.rules.edge_id, params=self.params,
                                  context=self.context if with_context else None, session=self.session)
        self._context_resent = with_context and not first_round
        self._holder_unknown = self._holder_unknown or self.verifier is None
        self._pending = msg
        return Send(self._subject(), msg, 0.0, self.rules.request_timeout_s)

    def ahead_msg(self, draft: Draft, round_no: int) -> DraftMsg:
        """Round `round_no`'s first attempt, drafted ahead of the verdicts before it (nodes/edge_ahead.py):
        to the sticky verifier, never with a context; it goes out as an ahead_draft with its basis."""
        return DraftMsg.from_draft(draft, request_id=self.req.request_id, round=round_no, attempt=0,
                                   edge_id=self.rules.edge_id, params=self.params, session=self.session)

    def adopt(self, draft: Draft, plan: RoundPlan, msg: DraftMsg, now: float) -> Send:
        """Make a round sent ahead (`ahead_msg`) the round in flight, now that every verdict before it
        is applied: its answer goes through `on_verdict` / `on_error` / ... like a round's sent by `send`,
        and a retry goes out as a plain chain draft (its basis is now known to hold)."""
        assert msg.round == self.round and self._pending is None, f"adopting round {msg.round} at {self.round}"
        self._draft, self._plan, self._pending = draft, plan, msg
        self.attempt, self._failing_since, self._context_resent = msg.attempt, None, False
        return Send(self._subject(), msg, 0.0, self.rules.request_timeout_s)

    def on_verdict(self, v: VerdictMsg, now: float) -> Accepted | Send | Failed:
        m = self._pending
        assert m is not None and self._draft is not None, "on_verdict without a round in flight"
        if (v.request_id, v.round, v.attempt) != (m.request_id, m.round, m.attempt):
            return self._retry(now, f"unexpected verdict for {v.request_id} round {v.round} attempt {v.attempt}",
                               to_queue=True, backoff=False)
        if v.accepted > len(self._draft.tokens):
            return Failed(BAD_MESSAGE, f"verifier {v.verifier_id} accepted {v.accepted} tokens of a "
                                       f"{len(self._draft.tokens)}-token draft")
        parents = self._draft.parents
        if (parents is None) != (v.path is None):
            sent, got = ("tree", "chain") if parents is not None else ("chain", "tree")
            return Failed(BAD_MESSAGE, f"verifier {v.verifier_id} answered a {sent} round with a {got} verdict")
        if parents is not None and (why := path_error(parents, list(v.path))) is not None:
            return Failed(BAD_MESSAGE, f"verifier {v.verifier_id}'s verdict on round {self.round}: {why}")
        if self.verifier is not None and self.verifier != v.verifier_id:
            self._leave(self.verifier)
        self.verifier = v.verifier_id
        self._holder_unknown = False
        return Accepted(v)

    def on_error(self, e: ErrorMsg, now: float) -> Send | Failed:
        where = self._where()
        if e.code in (RESEND_CONTEXT, DRAINING, VOIDED):  # voided: the verifier's record disagrees; rebuild it
            return self._retry(now, f"{where} answered {e.code}: {e.message}", to_queue=True, backoff=False)
        if e.code == OVERLOADED:
            return self._retry(now, f"{where} answered {e.code}: {e.message}", to_queue=True, backoff=True)
        if e.code == CONFLICT:
            return Failed(CONFLICT, f"{where} holds a different round {self.round} for this request: {e.message}")
        return Failed(e.code, f"{where} refused round {self.round}: {e.code}: {e.message}")

    def on_timeout(self, now: float, elsewhere: str | None = None) -> Send | Failed:
        """No verdict within the request timeout. `elsewhere`: a live verifier other than the one
        that timed out (from heartbeats), which gets the context; without one, the same verifier once
        (the reply may just be lost), then the queue group."""
        problem = f"{self._where()} did not answer within {self.rules.request_timeout_s:g} s"
        if elsewhere is not None and elsewhere != self.verifier:
            return self._retry(now, problem, to_queue=True, backoff=False, elsewhere=elsewhere)
        if self.attempt == 0 and self.verifier is not None:
            return self._retry(now, problem, to_queue=False, backoff=False)  # the reply may just be lost
        return self._retry(now, problem, to_queue=True, backoff=False)

    def on_holder_gone(self, now: float, elsewhere: str) -> Send | Failed:
        """The verifier this round waits on stopped sending heartbeats before the timeout: move the
        round, context included, to `elsewhere` now."""
        return self._retry(now, f"{self._where()} stopped sending heartbeats", to_queue=True, backoff=False,
                           elsewhere=elsewhere)

    def on_no_responders(self, now: float) -> Send | Failed:
        if self.verifier is not None:  # that verifier is gone: any other one
            return self._retry(now, f"no responders on {self._subject()}", to_queue=True, backoff=False)
        return self._retry(now, f"no verifier listens on {self._subject()} (no responders)", to_queue=True,
                           backoff=True)

    def complete(self, verdict: VerdictMsg, times: RoundTimes, channel_state: str | None, delay_ms: float,
                 timing_seq: int) -> RoundRecord:
        """Apply an accepted verdict: the new tokens, the client's chunk, the timing event."""
        d, plan, m = self._draft, self._plan, self._pending
        assert d is not None and plan is not None and m is not None
        new = round_tokens(d.tokens, verdict.to_verdict())
        self.context.extend(new)
        before = len(self.out)
        self.finish_reason = finish(new, self.out, self.req.max_new_tokens, self.eos_ids)
        kept = self.out[before:]
        done = self.finish_reason is not None
        text = ""
        full_text = None
        if self.detok is not None:
            text = self.detok.feed(kept) + (self.detok.flush() if done else "")
            full_text = self.detok.flush_all() if done else None
        chunk = TokenChunk(self.req.request_id, self.round, Int32Array(kept), text, done, self.finish_reason,
                           self.round + 1, len(self.out), Int32Array(self.out) if done else None, full_text)
        net = network_ms(times.round_ms, times.edge_queue_ms, times.draft_ms, verdict.verify_ms, verdict.queue_ms)
        ev = TimingEvent(self.rules.edge_id, self.req.request_id, self.round, m.attempt, len(d.tokens),
                         verdict.accepted, _ms(times.round_ms), _ms(times.draft_ms), _ms(verdict.verify_ms),
                         _ms(verdict.queue_ms), _ms(net), _ms(delay_ms), self.policy_spec, plan.policy_version,
                         verdict.verifier_id, channel_state, timing_seq, len(kept), _ms(times.edge_queue_ms),
                         _ms(times.link_ms), _ms(times.stall_ms), self._context_resent, len(self.context),
                         _ms(times.draft_ms if times.draft_real_ms is None else times.draft_real_ms),
                         _ms(verdict.verify_real_ms if verdict.emulated else verdict.verify_ms),
                         times.draft_real_ms is not None or verdict.emulated,
                         Float32Array(d.stop_scores) if d.stop_scores else None, _ms(plan.context.delay_ms),
                         draft_steps(d) if d.parents is not None else None)
        self.round += 1
        self._draft = self._pending = self._plan = None
        return RoundRecord(kept, chunk, ev, outcome_of(ev), done)

    # --- the end ---------------------------------------------------------------------
    def final_messages(self) -> list[tuple[str, DraftMsg]]:
        """One `final` draft to every verifier that may hold a session of this request."""
        edge = self.rules.edge_id
        targets = [subjects.draft(edge, v) for v in dict.fromkeys([*self.left_behind, self.verifier]) if v]
        if self._holder_unknown or self._retried_to_queue:  # a verifier may hold a session we never heard of
            targets.append(subjects.session_end(edge))
        return [(t, DraftMsg(self.req.request_id, min(self.round, (1 << 31) - 1), 0, self.rules.edge_id, Int32Array(),
                             0, final=True, session=self.session)) for t in targets]

    # --- internals -------------------------------------------------------------------
    def _subject(self) -> str:
        return subjects.draft(self.rules.edge_id, self.verifier)  # the queue group's when verifier is None

    def _where(self) -> str:
        return f"verifier {self.verifier}" if self.verifier else "the verifier queue group"

    def _leave(self, verifier: str) -> None:
        if verifier not in self.left_behind:
            self.left_behind.append(verifier)

    def _retry(self, now: float, problem: str, to_queue: bool, backoff: bool,
               elsewhere: str | None = None) -> Send | Failed:
        """The next attempt: the same verifier, or (`to_queue`) the context to the queue group, or
        straight to `elsewhere` when named."""
        if self._failing_since is None:
            self._failing_since = now
        waited = now - self._failing_since
        deadline = self.rules.failover_deadline_s
        if waited >= deadline:
            return Failed(NO_VERIFIER, f"no verifier answered round {self.round} of {self.req.request_id} "
                                       f"within {deadline:g} s (last: {problem})")
        m = self._pending
        assert m is not None
        self.retries += 1
        self.attempt = min(self.attempt + 1, (1 << 31) - 1)
        m.attempt = self.attempt
        if to_queue:
            if self.verifier is not None:
                self._leave(self.verifier)
            elif elsewhere is not None:  # the unanswered attempt went to the queue group: anyone may hold it
                self._retried_to_queue = True
            self.verifier = elsewhere
            m.context = Int32Array(self.context)
            self._context_resent = True
            if elsewhere is None:
                self._holder_unknown = self._retried_to_queue = True
        wait = 0.0
        if backoff:  # 50 ms, 100 ms, ... per attempt of this round, at most 1 s, never past the deadline
            wait = min(self.rules.backoff_max_s, self.rules.backoff_min_s * 2 ** min(self.attempt - 1, 16),
                       max(0.0, deadline - waited))
        return Send(self._subject(), m, wait, self.rules.request_timeout_s)


def _ms(x: float) -> float:
    return round(min(max(x, 0.0), 1e7), 3)
