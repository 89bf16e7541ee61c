"""The verifier's sessions, with no transport and no model in them.

`admit(draft, reply_to, now)` decides what one draft message means and
returns an `Admission`: a `Compute` to run (the caller runs the model, then
calls `finish`), replies to send now, and what happened (for the log).
`finish` turns the computed verdict into one reply per waiting attempt.

Rules (README, "Round protocol"):
  * a session belongs to (edge_id, request_id, session nonce): a context from
    another edge, another edge reusing a request id, or the same edge reusing
    a request id for a new request (the edge draws a new nonce per request), is
    a different session and never touches a live one; a retry that carries a
    context must carry the context the round was computed on;
  * a round is in flight from the moment it is admitted, before any compute:
    a retry of it (any attempt, with or without the context) waits for that
    verdict and gets the same one; a retry of the round last applied gets the
    cached verdict. Nothing is ever applied twice;
  * a round out of order, or for a session this verifier does not hold,
    answers `resend_context`; the owner's context rebuilds its session;
  * a draft belongs to the edge its subject names (`sender`: what the broker
    let the sender publish on); one whose `edge_id` says otherwise is refused
    `bad_message` before anything else, so it creates no session and ends none;
  * the session cap is checked and the slot taken in one step (no await
    between): at the cap an idle session (idle >= evict_idle_s) is evicted (its
    edge resends the context if it ever comes back), else `overloaded`;
  * a fair share per edge: at most `max_sessions_per_edge` sessions and
    `max_rounds_per_edge` rounds admitted and not yet finished (a replaced
    session's round included) for one edge; past either it gets `overloaded`
    naming the quota (at its session quota an edge's own idle session may make
    room). At the cap the victim is an idle session of the edge holding the
    most sessions, and only of an edge that, after the swap, still holds at
    least as many as the newcomer: an edge within its share never loses a
    session to make room for a bigger one;
  * draining: rounds in flight finish, cached verdicts are still answered,
    everything else answers `draining` (the edge moves to another verifier);
  * bounded: at most MAX_WAITERS attempts wait on one round (a duplicate reply
    subject is not added twice); an ended session is remembered for a while, so
    a draft overtaken by its own final message never builds it again;
  * a session's model state (e.g. a KV-cache slot) is handed to `release`
    exactly when nothing can use it again: the session left the table idle, its
    round finished after it was replaced or dropped, or its compute failed;
  * an edge whose heartbeats stopped (`drop_edge`) loses every session at once,
    not at the TTL; a round in flight still answers its waiters. It is not
    remembered as ended: if the edge was only slow, its context rebuilds it;
  * rounds drafted ahead (`assumed_next` given: the edge drafted round r+1 assuming
    round r is kept, schemas/ahead.py) wait behind the round before them, at most
    `max_ahead` per session (past it: `overloaded`), and are decided when that
    round's verdict exists, by the session's CloudWindow
    (nodes/protocol/pipelining.py): verified on the basis the verdicts left, or,
    when the basis broke, answered `voided` without compute, and so is every round
    waiting behind it. The last `max_ahead + 2` verdicts stay on record, so a resent
    round whose verdict exists is answered from it, never verified twice.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from nodes.protocol.pipelining import Basis, CloudWindow, Replay, Stale
from schemas.codec import Int32Array, Limits
from schemas.messages import (
    BAD_MESSAGE, CONFLICT, DRAINING, ERROR_CODES, INTERNAL, OVERLOADED, RESEND_CONTEXT, TOO_LONG, VERSION, VOIDED,
    AckMsg, DraftMsg, ErrorMsg, VerdictMsg,
)

SessionKey = tuple[str, str, str]  # (edge_id, request_id, session nonce)
MAX_WAITERS = 16
ENDED_KEEP = 4096  # recently ended sessions remembered (bounded)
ENDED_KEEP_S = 60.0
MAX_AHEAD = 16  # the most rounds drafted ahead any configuration lets one session hold


@dataclass(frozen=True)
class TableConfig:
    """The verifier's bounds; the one source of their defaults (CloudConfig, the CLI and serve read them)."""

    verifier_id: str = "cloud-1"
    max_sessions: int = 128
    session_ttl_s: float = 120.0  # an idle session is dropped after this long
    evict_idle_s: float = 2.0     # at the cap, a session idle this long may be evicted for a new one
    max_sessions_per_edge: int | None = None  # None: half of max_sessions (an edge's own --max-active default fits)
    max_rounds_per_edge: int | None = None    # None: the session quota (a round per session it may hold)
    max_ahead: int = 4  # rounds drafted ahead one session may have waiting (0: rounds in flight are refused)

    def __post_init__(self) -> None:
        if not isinstance(self.max_ahead, int) or not 0 <= self.max_ahead <= MAX_AHEAD:
            raise ValueError(f"max_ahead must be an integer in 0..{MAX_AHEAD}, got {self.max_ahead!r}")
        for name in ("max_sessions", "max_sessions_per_edge", "max_rounds_per_edge"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_sessions_per_edge is not None and self.max_sessions_per_edge > self.max_sessions:
            raise ValueError(f"max_sessions_per_edge ({self.max_sessions_per_edge}) exceeds max_sessions "
                             f"({self.max_sessions})")

    @property
    def sessions_per_edge(self) -> int:
        return self.max_sessions_per_edge or max(1, self.max_sessions // 2)

    @property
    def rounds_per_edge(self) -> int:
        return self.max_rounds_per_edge or self.sessions_per_edge


@dataclass
class Waiter:
    reply_to: Any
    attempt: int


@dataclass
class InFlight:
    round: int
    tokens: tuple[int, ...]
    received: float
    waiters: list[Waiter] = field(default_factory=list)
    parents: tuple[int, ...] | None = None  # a tree round's shape (None: a chain)
    assumed_next: int | None = None  # a round drafted ahead: the token it assumes the round before ends with
    msg: DraftMsg | None = None      # a round drafted ahead: its draft, started once its basis is decided


@dataclass
class Session:
    key: SessionKey
    params: tuple[float, float]  # temperature, top_p (top_k only says how a message's q rows are cut)
    tokens: list[int]                     # the context this session holds (prompt + applied rounds)
    next_round: int
    last_used: float
    last_context_len: int = 0             # len(tokens) before the last applied round
    state: Any = None                     # the model's state (a TargetSession), owned by the caller
    last_tokens: tuple | None = None      # the last applied round's draft (tokens, with a tree's parents)
    last_verdict: VerdictMsg | None = None
    in_flight: InFlight | None = None
    ending: bool = False
    window: CloudWindow = field(default_factory=lambda: CloudWindow(keep=MAX_AHEAD + 2))  # decides rounds drafted ahead, from the verdicts
    records: OrderedDict = field(default_factory=OrderedDict)  # round -> (shape, verdict, context length before it)
    ahead: list[InFlight] = field(default_factory=list)  # rounds drafted ahead, waiting behind the one in flight


@dataclass
class Compute:
    """Run the target on `session` for `msg`: from scratch on `session.tokens` when `rebuild`."""

    session: Session
    msg: DraftMsg
    rebuild: bool
    parents: tuple[int, ...] | None = None  # a tree round: node i's parent (-1 = the root)
    ahead: bool = False  # a round drafted ahead, verified because the verdicts kept its basis


@dataclass
class Reply:
    to: Any
    msg: VerdictMsg | ErrorMsg | AckMsg


@dataclass
class Admission:
    event: str                        # what happened: compute, joined_in_flight, verdict_resent, session_end, or an error code
    replies: list[Reply] = field(default_factory=list)
    compute: Compute | None = None
    evicted: SessionKey | None = None
    detail: str = ""


@dataclass
class Outcome:
    """A finished computation: accepted draft tokens and the target's own token."""

    accepted: int
    next_token: int
    verify_ms: float
    queue_ms: float
    verify_real_ms: float | None = None  # when verify_ms is an emulated device's
    path: list[int] | None = None        # a tree round: the accepted nodes (len = accepted)


def _shape(inf: InFlight) -> tuple:
    """What a retry of this round must repeat: its tokens, and a tree's parents."""
    return inf.tokens if inf.parents is None else (inf.tokens, inf.parents)


def _depth(inf: InFlight) -> int:
    """What a round drafts along its stream: a chain's length, a tree's depth (its spine's length: a
    round drafted ahead on a tree round assumes the whole spine accepted)."""
    if inf.parents is None:
        return len(inf.tokens)
    depth: list[int] = []
    for p in inf.parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return max(depth, default=0)


def sender_mismatch(sender: str | None, msg: DraftMsg) -> str | None:
    """Why a draft cannot be taken from the edge its subject names, or None. The subject's edge id is
    what the broker let the sender publish on; the body's `edge_id` is only what the sender says."""
    if sender is None or sender == msg.edge_id:
        return None
    kind = "final draft" if msg.final else "draft"
    return f"{kind} with edge_id {msg.edge_id!r} arrived on edge {sender!r}'s subject: an edge sends only its own"


class SessionTable:
    def __init__(self, config: TableConfig, limits: Limits = Limits(), release: Callable[[Any], None] | None = None):
        self.cfg, self.limits = config, limits
        self.release = release if release is not None else (lambda state: None)
        self.sessions: dict[SessionKey, Session] = {}
        self.ended: OrderedDict[SessionKey, float] = OrderedDict()
        self.draining = False
        self.rounds = 0
        self.edge_rounds: Counter[str] = Counter()  # rounds admitted and not finished, per edge

    # --- admission -----------------------------------------------------------------
    def admit(self, msg: DraftMsg, reply_to: Any, now: float, sender: str | None = None,
              parents: tuple[int, ...] | None = None, assumed_next: int | None = None) -> Admission:
        """`sender`: the edge id in the subject the draft arrived on (None only in-process: no subject).
        `parents`: the round is a tree of `msg.tokens` (same rules; a retry must carry the same tree).
        `assumed_next`: the round was drafted ahead, assuming round `msg.round - 1` is kept and ends with it."""
        refusal = sender_mismatch(sender, msg)
        if refusal is not None:
            return self._error(reply_to, msg, BAD_MESSAGE, refusal)
        key = (msg.edge_id, msg.request_id, msg.session)
        s = self.sessions.get(key)
        if msg.final:
            return self._end(key, s, msg, reply_to, now)
        if key in self.ended:
            return self._error(reply_to, msg, RESEND_CONTEXT, "this session has ended")
        params = (msg.temperature, msg.top_p)
        tokens = tuple(msg.tokens)
        shape = tokens if parents is None else (tokens, tuple(parents))  # what a retry must repeat
        context = None if msg.context is None else list(msg.context)
        if s is not None:
            if s.params != params:
                return self._error(reply_to, msg, BAD_MESSAGE, "sampling parameters changed within a session")
            if s.in_flight is not None and s.in_flight.round == msg.round and (context is None or context == s.tokens):
                if _shape(s.in_flight) != shape:
                    return self._error(reply_to, msg, CONFLICT, f"round {msg.round} is in flight with another draft")
                waiters = s.in_flight.waiters
                if reply_to is not None and all(w.reply_to != reply_to for w in waiters):
                    if len(waiters) >= MAX_WAITERS:
                        return self._error(reply_to, msg, OVERLOADED, f"{MAX_WAITERS} attempts already wait on this round")
                    waiters.append(Waiter(reply_to, msg.attempt))
                return Admission("joined_in_flight")
            if msg.round in s.records and msg.round < s.next_round:  # on record: answered from it
                shape_then, verdict, context_len = s.records[msg.round]
                if context is None or context == s.tokens[:context_len]:
                    if shape_then != shape:
                        return self._error(reply_to, msg, CONFLICT, f"round {msg.round} was applied with another draft")
                    s.last_used = now
                    again = replace(verdict, attempt=msg.attempt)
                    return Admission("verdict_resent", [Reply(reply_to, again)] if reply_to is not None else [])
            waiting = next((w for w in s.ahead if w.round == msg.round), None)
            if waiting is not None and context is None:  # drafted ahead, waiting: a retry joins it
                if _shape(waiting) != shape:
                    return self._error(reply_to, msg, CONFLICT, f"round {msg.round} waits with another draft")
                if reply_to is not None and all(w.reply_to != reply_to for w in waiting.waiters):
                    if len(waiting.waiters) >= MAX_WAITERS:
                        return self._error(reply_to, msg, OVERLOADED, f"{MAX_WAITERS} attempts already wait on this round")
                    waiting.waiters.append(Waiter(reply_to, msg.attempt))
                return Admission("joined_in_flight")
        if assumed_next is not None:
            return self._admit_ahead(s, msg, reply_to, now, tokens, assumed_next, parents)
        if self.draining:
            return self._error(reply_to, msg, DRAINING,
                               f"verifier {self.cfg.verifier_id} is shutting down: resend the context elsewhere")
        busy = self.edge_rounds[msg.edge_id]
        if busy >= self.cfg.rounds_per_edge:
            return self._error(reply_to, msg, OVERLOADED,
                               f"edge {msg.edge_id} has {busy} rounds in flight on verifier {self.cfg.verifier_id}, "
                               f"its share (max_rounds_per_edge={self.cfg.rounds_per_edge})")
        if context is None:
            if s is None:
                return self._error(reply_to, msg, RESEND_CONTEXT,
                                   f"verifier {self.cfg.verifier_id} holds no session for this request")
            if s.in_flight is not None or msg.round != s.next_round:
                return self._error(reply_to, msg, RESEND_CONTEXT,
                                   f"round {msg.round} is out of order (expected {s.next_round})")
            return self._start(s, msg, reply_to, tokens, now, rebuild=False, parents=parents)
        if s is not None and s.in_flight is None and msg.round == s.next_round and context == s.tokens:
            return self._start(s, msg, reply_to, tokens, now, rebuild=False, parents=parents)  # the cache holds it
        evicted = None
        if s is None:
            refusal, evicted = self._room_for(msg.edge_id, now)
            if refusal is not None:
                return self._error(reply_to, msg, OVERLOADED, refusal)
            if evicted is not None:
                self._release(self.sessions.pop(evicted))
        # a new session object: a round still computing on the old one finishes on its own object
        fresh = Session(key, params, context, msg.round, now)
        adm = self._start(fresh, msg, reply_to, tokens, now, rebuild=True, parents=parents)
        if adm.compute is not None:
            if s is not None and s.in_flight is None:  # replaced while idle (in flight: freed at its finish)
                self._release(s)
            self.sessions[key] = fresh
        adm.evicted = evicted
        return adm

    def finish(self, session: Session, result: Outcome | BaseException, state: Any, now: float) -> list[Reply]:
        """The computation admitted for `session` ended: one reply per waiting attempt."""
        inf = session.in_flight
        assert inf is not None, "finish without a round in flight"
        session.in_flight = None
        edge = session.key[0]
        self.edge_rounds[edge] -= 1
        if self.edge_rounds[edge] <= 0:
            del self.edge_rounds[edge]
        current = self.sessions.get(session.key) is session
        rid = session.key[1]
        if isinstance(result, BaseException):
            if state is not None and state is not session.state:
                self.release(state)
            self._release(session)  # the model state may be half-updated: the edge resends the context
            if current:
                del self.sessions[session.key]
            code = getattr(result, "code", None)
            if code in ERROR_CODES:  # an error that names its code (e.g. too_long) says what went wrong
                err = ErrorMsg(code, f"verifier {self.cfg.verifier_id}: {str(result).splitlines()[0][:300]}", rid)
            else:
                err = ErrorMsg(INTERNAL, f"verifier {self.cfg.verifier_id} failed: {type(result).__name__}", rid)
            return [Reply(w.reply_to, err) for w in inf.waiters]
        a = result.accepted
        emulated = result.verify_real_ms is not None
        real = result.verify_real_ms if emulated else result.verify_ms
        path = None if inf.parents is None else Int32Array(result.path or [])
        verdict = VerdictMsg(rid, inf.round, 0, a, result.next_token, round(result.verify_ms, 3),
                             round(result.queue_ms, 3), self.cfg.verifier_id, round(real, 3), emulated, path)
        session.last_context_len = len(session.tokens)
        session.records[inf.round] = (_shape(inf), verdict, len(session.tokens))
        while len(session.records) > self.cfg.max_ahead + 2:
            session.records.popitem(last=False)
        session.window.record(inf.round, _depth(inf), a, result.next_token)
        drafted = inf.tokens[:a] if path is None else tuple(inf.tokens[v] for v in path)
        session.tokens.extend(drafted + (result.next_token,))
        session.next_round, session.last_tokens, session.last_verdict = inf.round + 1, _shape(inf), verdict
        if session.state is not state:
            self._release(session)
        session.state, session.last_used = state, now
        self.rounds += 1
        if not current:  # replaced or dropped while computing: nothing will use this state again
            self._release(session)
        elif session.ending:
            del self.sessions[session.key]
            self._release(session)
            self._remember_end(session.key, now)
        return [Reply(w.reply_to, replace(verdict, attempt=w.attempt)) for w in inf.waiters]

    def take_ahead(self, session: Session, now: float) -> Admission:
        """After `finish`: the round drafted ahead that waited behind the finished one. Verified (a
        Compute) when the verdicts left its basis; else answered `voided`, with every round waiting
        behind it (their basis is the voided round). A session that was dropped, replaced or ended
        meanwhile answers them `resend_context`: the edge rebuilds it from the context."""
        if not session.ahead:
            return Admission("none")
        current = self.sessions.get(session.key) is session and not session.ending and session.in_flight is None
        head = session.ahead[0]
        if not current or head.round != session.next_round:
            return self._void_ahead(session, RESEND_CONTEXT, f"round {head.round} was drafted ahead on a session "
                                                             f"verifier {self.cfg.verifier_id} no longer holds")
        decided = session.window.admit(head.round, Basis(head.round - 1, head.assumed_next))
        if isinstance(decided, Stale):
            return self._void_ahead(session, VOIDED, decided.reason)
        if self.draining:
            return self._void_ahead(session, DRAINING, f"verifier {self.cfg.verifier_id} is shutting down: resend "
                                                       f"the context elsewhere")
        session.ahead.pop(0)
        assert head.msg is not None
        adm = self._start(session, head.msg, None, head.tokens, now, rebuild=False, parents=head.parents)
        if adm.compute is not None:
            assert session.in_flight is not None
            session.in_flight.waiters = head.waiters
            adm.event, adm.compute.ahead = "ahead_started", True
        else:  # too long: its waiters hear it, and so does every round behind it
            session.ahead.insert(0, head)
            adm = self._void_ahead(session, TOO_LONG, adm.detail)
        return adm

    def _admit_ahead(self, s: Session | None, msg: DraftMsg, reply_to: Any, now: float, tokens: tuple[int, ...],
                     assumed_next: int, parents: tuple[int, ...] | None) -> Admission:
        """A round drafted ahead that is neither in flight nor on record: decided now when the round before
        it is verified, else queued behind it (bounded by `max_ahead`)."""
        if self.cfg.max_ahead < 1:
            return self._error(reply_to, msg, VERSION, f"verifier {self.cfg.verifier_id} takes no rounds drafted "
                                                      f"ahead (max_ahead=0): start the edge without --ahead")
        if msg.context is not None:
            return self._error(reply_to, msg, BAD_MESSAGE, "a round drafted ahead carries no context")
        if s is None:
            return self._error(reply_to, msg, RESEND_CONTEXT,
                               f"verifier {self.cfg.verifier_id} holds no session for this request")
        if self.draining:
            return self._error(reply_to, msg, DRAINING,
                               f"verifier {self.cfg.verifier_id} is shutting down: resend the context elsewhere")
        behind = s.ahead[-1].round if s.ahead else (s.in_flight.round if s.in_flight is not None else None)
        if behind is not None and msg.round == behind + 1:
            if len(s.ahead) >= self.cfg.max_ahead:
                return self._error(reply_to, msg, OVERLOADED, f"session holds {len(s.ahead)} rounds drafted ahead on "
                                                              f"verifier {self.cfg.verifier_id} "
                                                              f"(max_ahead={self.cfg.max_ahead})")
            waiters = [Waiter(reply_to, msg.attempt)] if reply_to is not None else []
            s.ahead.append(InFlight(msg.round, tokens, now, waiters, None if parents is None else tuple(parents),
                                    assumed_next, msg))
            s.last_used = now
            return Admission("queued_ahead")
        if s.in_flight is None and msg.round > s.next_round:  # nothing it could wait behind: its basis was voided
            return self._error(reply_to, msg, VOIDED, f"round {msg.round} continues round {msg.round - 1}, which was "
                                                      f"not verified (the next round here is {s.next_round})")
        if s.in_flight is not None or msg.round != s.next_round:
            return self._error(reply_to, msg, RESEND_CONTEXT,
                               f"round {msg.round} is out of order (expected {s.next_round})")
        decided = s.window.admit(msg.round, Basis(msg.round - 1, assumed_next))
        if isinstance(decided, Stale):
            return self._error(reply_to, msg, VOIDED, decided.reason)
        if isinstance(decided, Replay):  # off the record already (cannot happen within max_ahead + 2)
            return self._error(reply_to, msg, RESEND_CONTEXT, f"round {msg.round} is no longer on record")
        busy = self.edge_rounds[msg.edge_id]
        if busy >= self.cfg.rounds_per_edge:
            return self._error(reply_to, msg, OVERLOADED,
                               f"edge {msg.edge_id} has {busy} rounds in flight on verifier {self.cfg.verifier_id}, "
                               f"its share (max_rounds_per_edge={self.cfg.rounds_per_edge})")
        adm = self._start(s, msg, reply_to, tokens, now, rebuild=False, parents=parents)
        if adm.compute is not None:
            adm.compute.ahead = True
        return adm

    def _void_ahead(self, session: Session, code: str, why: str) -> Admission:
        """Answer every round waiting ahead on `session` with `code`: none of them is verified."""
        rid = session.key[1]
        replies = [Reply(w.reply_to, ErrorMsg(code, why[:1000], rid)) for inf in session.ahead for w in inf.waiters]
        rounds = [inf.round for inf in session.ahead]
        session.ahead.clear()
        return Admission(code, replies, detail=f"rounds {rounds}: {why}")

    # --- housekeeping ----------------------------------------------------------------
    def expire(self, now: float) -> list[SessionKey]:
        """Drop sessions idle longer than the TTL (never one with a round in flight)."""
        old = [k for k, s in self.sessions.items()
               if s.in_flight is None and now - s.last_used > self.cfg.session_ttl_s]
        for k in old:
            self._release(self.sessions.pop(k))
        return old

    def drop_edge(self, edge_id: str) -> list[SessionKey]:
        """Forget every session of `edge_id` (its heartbeats stopped). An idle session's state is
        released now, one computing at its `finish` (which still answers its waiters)."""
        keys = [k for k in self.sessions if k[0] == edge_id]
        for k in keys:
            s = self.sessions.pop(k)
            if s.in_flight is None:
                self._release(s)
        return keys

    def begin_drain(self) -> None:
        self.draining = True

    def in_flight(self) -> int:
        return sum(1 for s in self.sessions.values() if s.in_flight is not None)

    def others_live(self, key: SessionKey) -> bool:
        """Whether any session besides `key` is held (compute then stays off the event loop)."""
        return len(self.sessions) - (key in self.sessions) > 0

    # --- internals -------------------------------------------------------------------
    def _start(self, s: Session, msg: DraftMsg, reply_to: Any, tokens: tuple[int, ...], now: float,
               rebuild: bool, parents: tuple[int, ...] | None = None) -> Admission:
        if len(s.tokens) + len(tokens) + 1 > self.limits.max_context_tokens:
            err = self._error(reply_to, msg, TOO_LONG, f"context would exceed {self.limits.max_context_tokens} tokens")
            if not rebuild and self.sessions.get(s.key) is s:  # it cannot grow: nothing more to verify on it
                self._release(self.sessions.pop(s.key))
            return err
        waiters = [Waiter(reply_to, msg.attempt)] if reply_to is not None else []
        parents = None if parents is None else tuple(parents)
        s.in_flight = InFlight(msg.round, tokens, now, waiters, parents)
        s.last_used = now
        self.edge_rounds[s.key[0]] += 1
        return Admission("compute", compute=Compute(s, msg, rebuild, parents))

    def _end(self, key: SessionKey, s: Session | None, msg: DraftMsg, reply_to: Any, now: float) -> Admission:
        if s is not None:
            if s.in_flight is not None:
                s.ending = True
            else:
                self._release(self.sessions.pop(key))
        self._remember_end(key, now)
        ack = [Reply(reply_to, AckMsg(msg.request_id, "session_end"))] if reply_to is not None else []
        return Admission("session_end", ack, detail="held" if s is not None else "unknown")

    def _remember_end(self, key: SessionKey, now: float) -> None:
        self.ended[key] = now
        self.ended.move_to_end(key)
        while self.ended and (len(self.ended) > ENDED_KEEP or now - next(iter(self.ended.values())) > ENDED_KEEP_S):
            self.ended.popitem(last=False)

    def _room_for(self, edge: str, now: float) -> tuple[str | None, SessionKey | None]:
        """Whether a new session of `edge` may start: (why not, None) or (None, the session to evict or None)."""
        counts = Counter(k[0] for k in self.sessions)
        mine, quota = counts[edge], self.cfg.sessions_per_edge
        if mine >= quota:  # at its share: only its own idle sessions may make room
            victim = self._evictable(now, lambda e: e == edge, counts)
            if victim is None:
                return (f"edge {edge} holds {mine} sessions on verifier {self.cfg.verifier_id}, its share "
                        f"(max_sessions_per_edge={quota}), none idle {self.cfg.evict_idle_s:g} s"), None
            return None, victim
        if len(self.sessions) < self.cfg.max_sessions:
            return None, None
        # at the cap: an idle session of the biggest edge that stays at least as big as the newcomer
        victim = self._evictable(now, lambda e: e == edge or counts[e] > mine + 1, counts)
        if victim is None:
            return (f"verifier {self.cfg.verifier_id} holds {len(self.sessions)} sessions (max_sessions="
                    f"{self.cfg.max_sessions}), none idle {self.cfg.evict_idle_s:g} s and held by an edge with "
                    f"more than edge {edge}'s {mine}"), None
        return None, victim

    def _evictable(self, now: float, may_evict: Callable[[str], bool], counts: Counter) -> SessionKey | None:
        """The idle session to evict among edges `may_evict` allows: the biggest edge's, least recently used."""
        idle = [(-counts[k[0]], s.last_used, k) for k, s in self.sessions.items()
                if s.in_flight is None and now - s.last_used >= self.cfg.evict_idle_s and may_evict(k[0])]
        return min(idle)[2] if idle else None

    def _release(self, s: Session) -> None:
        """Hand `s`'s model state to `release` (once: the session forgets it)."""
        state, s.state = s.state, None
        if state is not None:
            self.release(state)

    def _error(self, reply_to: Any, msg: DraftMsg, code: str, text: str) -> Admission:
        replies = [Reply(reply_to, ErrorMsg(code, text, msg.request_id))] if reply_to is not None else []
        return Admission(code, replies, detail=text)
