"""Exactly-once rules of tree rounds, with no transport and no model in them.

The verifier side (`TreeRounds`): per (edge, request) the next round is computed once; a
retry of a round in flight waits for that verdict; a retry of the round last finished gets
the cached verdict (the same accepted path and token, never a second compute, which would
draw a different sample); any other round answers `resend_context`. The edge side
(`TreeEdge`) applies a verdict only for the round it has outstanding, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

COMPUTE, WAIT, CACHED, RESEND_CONTEXT = "compute", "wait", "cached", "resend_context"


@dataclass(frozen=True)
class TreeVerdict:
    path: tuple[int, ...]    # accepted node indices, root's child first
    tokens: tuple[int, ...]  # emitted tokens: the accepted drafts, then the target's


@dataclass
class _Session:
    next_round: int = 0
    in_flight: int | None = None
    last: tuple[int, TreeVerdict] | None = None


@dataclass
class TreeRounds:
    sessions: dict[tuple[str, str], _Session] = field(default_factory=dict)

    def admit(self, edge_id: str, request_id: str, round_: int) -> tuple[str, TreeVerdict | None]:
        s = self.sessions.setdefault((edge_id, request_id), _Session())
        if s.last is not None and s.last[0] == round_:
            return CACHED, s.last[1]
        if s.in_flight == round_:
            return WAIT, None
        if s.in_flight is None and round_ == s.next_round:
            s.in_flight = round_
            return COMPUTE, None
        return RESEND_CONTEXT, None

    def finish(self, edge_id: str, request_id: str, round_: int, verdict: TreeVerdict) -> None:
        s = self.sessions.get((edge_id, request_id))
        if s is None or s.in_flight != round_:
            raise ValueError(f"tree round {round_} of {request_id} was not admitted for compute")
        s.in_flight, s.last, s.next_round = None, (round_, verdict), round_ + 1


@dataclass
class TreeEdge:
    """The edge's side of one request: which round is outstanding, and the tokens applied."""

    round: int = 0
    outstanding: bool = False
    tokens: list[int] = field(default_factory=list)

    def send(self) -> int:
        self.outstanding = True
        return self.round

    def apply(self, round_: int, verdict: TreeVerdict) -> bool:
        """True when applied; False for a duplicate or stale verdict (nothing changes)."""
        if not self.outstanding or round_ != self.round:
            return False
        self.tokens.extend(verdict.tokens)
        self.outstanding, self.round = False, self.round + 1
        return True
