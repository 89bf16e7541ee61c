"""Which tree a round drafts: a fixed DEPTHxWIDTH spine, or under `auto` the spine of least
modelled ms/token (control.trees) at the delay the edge measured, planned with the round costs
and acceptance table learned from the edge's own tree rounds (a prior until it has some).
No transport and no model here."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from control.trees import Tree, TreeCost, best_shape, spine
from control.types import ControlError
from schemas.trees import MAX_TREE_NODES

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
