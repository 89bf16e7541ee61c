"""Exactly-once rules of tree rounds, with no transport and no model in them.

The verifier side (`TreeRounds`): per (edge, request) the next round is computed once; a
retry of a round in flight waits for that verdict; a retry of the round last finished gets
the cached verdict (the same accepted path and token, never a second compute, which would
draw a different sample); any other round answers `resend_context`. The edge side
(`TreeEdge`) applies a verdict only for the round it has outstanding, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from control.trees import Tree, TreeCost, best_shape, spine
from control.types import ControlError
from schemas.rounds import Draft, Verdict
from schemas.trees import MAX_TREE_NODES

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
# legal for the tree that was sent, which tokens a path emits, and how the edge picks a shape.

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


# A prior for `--tree auto` with no profile: the bundled pair's spine measurements (docs/trees.md:
# a rank-1 candidate accepted ~3 in 4, the second ~1 in 10, the third ~1 in 20 (ranks exclude each other);
# one batched draft step ~0.75 ms per depth, verify ~1.75 ms plus ~0.07 ms per node on a CPU).
PRIOR_ACCEPT = np.array([[0.75, 0.10, 0.05]] * 8)
PRIOR_COST = TreeCost(draft_step_ms=0.75, draft_node_ms=0.0, verify_ms=1.75, verify_node_ms=0.07)
AUTO = "auto"


def parse_tree(spec: str | None) -> Tree | str | None:
    """`--tree`: None/"" (chains), "auto" (best shape for the told delay), or DEPTHxWIDTH (a spine)."""
    if spec is None or spec == "" or spec == "off":
        return None
    if spec == AUTO:
        return AUTO
    try:
        d, w = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise ControlError(f"tree shape {spec!r}: expected DEPTHxWIDTH (e.g. 4x2), 'auto' or 'off'") from None
    tree = spine(d, w)
    if tree.nodes > MAX_TREE_NODES:
        raise ControlError(f"tree shape {spec!r}: {tree.nodes} nodes exceed the wire's limit of {MAX_TREE_NODES}")
    return tree


def choose_tree(spec: Tree | str, delay_ms: float, max_depth: int, wanted: int,
                accept: np.ndarray = PRIOR_ACCEPT, cost: TreeCost = PRIOR_COST) -> Tree | None:
    """The round's shape: the fixed one, or the spine of least modelled ms/token at this one-way delay
    (control.trees.best_shape), no deeper than `max_depth` nor than the `wanted` tokens still to come
    need (the target's own token is the last of them). None: only that token is wanted, the round
    drafts nothing."""
    if wanted <= 1:
        return None
    depth = max(1, min(max_depth, wanted - 1))
    if spec != AUTO:
        assert isinstance(spec, Tree)
        if spec.depth <= depth:
            return spec
        return spine(depth, spec.width)
    shapes = [spine(d, w) for d in range(1, depth + 1) for w in range(1, accept.shape[1] + 1)]
    return best_shape(accept[:depth], cost, delay_ms, shapes)[0]


@dataclass
class TreeCostEstimate:
    """The round cost `auto` plans with, learned from the edge's own tree rounds (the draft time it
    measured, the verify time the verdict carries) instead of the prior alone: the machine and the
    verifier's load set these, and a planner that thinks compute is cheap picks trees too small.
    Medians of the last `keep` rounds: draft ms per depth step, and the verify time less the prior's
    per-node share (one fixed shape cannot separate a per-node slope from the base)."""

    prior: TreeCost = PRIOR_COST
    keep: int = 32
    _step: list[float] = field(default_factory=list)
    _verify: list[float] = field(default_factory=list)

    def add(self, depth: int, nodes: int, draft_ms: float, verify_ms: float) -> None:
        if depth < 1:
            return
        self._step = (self._step + [draft_ms / depth])[-self.keep:]
        self._verify = (self._verify + [max(0.0, verify_ms - self.prior.verify_node_ms * nodes)])[-self.keep:]

    def cost(self) -> TreeCost:
        if not self._step:
            return self.prior
        return TreeCost(float(np.median(self._step)), 0.0, float(np.median(self._verify)), self.prior.verify_node_ms)


@dataclass
class TreeAcceptEstimate:
    """The acceptance table `auto` plans with, learned from the paths the edge's tree rounds got
    back: at every depth a round reached (its parent was accepted), which rank was accepted, if
    any. Counts start from the prior as `weight` pseudo-rounds per depth, so a few rounds move it
    little and a prior-free table never has an empty row."""

    prior: np.ndarray = field(default_factory=lambda: PRIOR_ACCEPT.copy())
    weight: float = 8.0

    def __post_init__(self) -> None:
        self._hits = self.prior * self.weight
        self._trials = np.full(self.prior.shape[0], self.weight)

    def add(self, parents: list[int], path: list[int]) -> None:
        """One round's tree and accepted path: depth d+1 was tried iff the path reached depth d."""
        ranks = Tree(tuple(parents)).ranks()
        kids_at: dict[int, int] = {}
        for p in parents:
            kids_at[p] = kids_at.get(p, 0) + 1
        up = -1
        for d in range(self.prior.shape[0]):
            if up not in kids_at:  # no child to try below here
                return
            self._trials[d] += 1
            if d >= len(path):
                return
            v = path[d]
            if ranks[v] <= self.prior.shape[1]:
                self._hits[d, ranks[v] - 1] += 1
            up = v

    def table(self) -> np.ndarray:
        return self._hits / self._trials[:, None]
