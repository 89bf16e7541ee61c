"""Exactly-once rules of tree rounds, with no transport and no model in them.

The verifier side (`TreeRounds`): per (edge, request) the next round is computed once; a
retry of a round in flight waits for that verdict; a retry of the round last finished gets
the cached verdict (the same accepted path and token, never a second compute, which would
draw a different sample); any other round answers `resend_context`. The edge side
(`TreeEdge`) applies a verdict only for the round it has outstanding, once. The pipeline's tree
rounds use the chain rounds' machinery for those rules, plus the path rules at the end of this file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.rounds import Draft, Verdict

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


# --- tree rounds in the pipeline -------------------------------------------------------
# The pipeline runs tree rounds through the chain rounds' own exactly-once machinery (EdgeRequest on
# the edge, SessionTable on the verifier: round, attempt, cached verdicts, context resends), with the
# tree's parents beside the node tokens. What is new for a tree lives here: which verdict paths are
# legal for the tree that was sent, and which tokens a path emits (the shape a round drafts is
# nodes/protocol/tree_shape.py's).

def path_error(parents: list[int], path: list[int]) -> str | None:
    """Why `path` cannot be an accepted path of the tree `parents` (None: it can): it must start at a
    child of the root and go down one child at a time."""
    up = -1
    for v in path:
        if type(v) is not int or not 0 <= v < len(parents):
            return f"path names node {v!r} of a {len(parents)}-node tree"
        if parents[v] != up:
            return f"path goes to node {v}, which is not a child of {'the root' if up < 0 else f'node {up}'}"
        up = v
    return None


def path_tokens(tokens: list[int], path: list[int]) -> list[int]:
    """The drafted tokens an accepted path emits (the verdict's next token follows them)."""
    return [tokens[v] for v in path]


def round_tokens(drafted: list[int], verdict: Verdict) -> list[int]:
    """The tokens a verdict emits: the accepted drafts (a chain's prefix or a tree's path), then the
    target's own token."""
    kept = drafted[:verdict.accepted] if verdict.path is None else path_tokens(drafted, verdict.path)
    return list(kept) + [verdict.next_token]


def draft_steps(d: Draft) -> int:
    """Sequential draft forwards a draft took: one per token of a chain, one per depth of a tree."""
    if d.parents is None:
        return len(d.tokens)
    depth: list[int] = []
    for p in d.parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return max(depth, default=0)


def feed_parents(parents: list[int], pending: int = 1) -> list[int]:
    """Parents over one verify feed `pending tokens + tree nodes`: the pending tokens form a chain and
    the tree hangs below the last of them (index -1 = sees only the cache)."""
    return [i - 1 for i in range(pending)] + [p + pending if p >= 0 else pending - 1 for p in parents]
