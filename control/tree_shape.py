"""Online control of the draft tree's shape, with no profile.

From verified rounds alone it learns what control.trees needs to price a shape:
- the depth x rank acceptance table p_{d,k}: a round's accepted path says, at every depth it
  reached, which rank among the drafted children was accepted; at the depth where it stopped,
  that the target's token was none of the drafted ranks (censored: rank > children drafted, or
  not drafted at all). Below the stop nothing is seen. Ranks are estimated as hazards
  h_{d,k} = P(rank k | rank >= k), the censoring-correct (Kaplan-Meier) form: a miss at a node
  with c children only says something about ranks 1..c. Each depth is shrunk towards the
  pooled estimate over depths, so a depth seldom reached borrows from the others.
- the round's compute: a ridge fit of compute ms on (depth, nodes, 1), the form of
  control.trees.TreeCost (one batched draft step per depth, per-node draft and verify shares,
  a fixed verify), blended for each shape already played with that shape's own mean (weight
  `own_weight` rounds for the fit).
It then picks, for the delay it is told, the shape with the least expected ms/token among
chains, depth x width spines and the optimal n-node trees of the estimated table, exploring a
uniformly drawn shape with a probability that decays as explore / sqrt(rounds).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from control.tree_dp import optimal_tree_set
from control.trees import Tree, TreeCost, chain, spine
from control.types import ControlError

TREE_SIZES = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)


@dataclass(frozen=True)
class Observation:
    """At `depth`, under an accepted parent with `drafted` children: the accepted child's rank,
    or None when none of them was the target's token."""

    depth: int
    drafted: int
    rank: int | None


def observations(tree: Tree, path: Sequence[int]) -> list[Observation]:
    """What one verified round says about p: `path` = the accepted nodes of `tree` (0-based,
    root's child first), as tree_verify's walk returns them minus one."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(tree.parents):
        kids.setdefault(p, []).append(i)
    out, node = [], -1
    for d in range(1, len(path) + 2):
        children = kids.get(node, [])
        if not children:
            break
        if d <= len(path):
            nxt = path[d - 1]
            if nxt not in children:
                raise ControlError(f"accepted path: node {nxt} is not a child of node {node}")
            out.append(Observation(d, len(children), children.index(nxt) + 1))
            node = nxt
        else:
            out.append(Observation(d, len(children), None))
    return out


class RankTable:
    """Censored estimate of p_{d,k} for d <= max_depth, k <= max_rank (ranks beyond: a miss)."""

    def __init__(self, max_depth: int, max_rank: int, depth_weight: float = 4.0, prior_hazard: float = 0.5,
                 prior_weight: float = 1.0):
        if max_depth < 1 or max_rank < 1:
            raise ControlError(f"rank table: depth and rank must be >= 1, got {max_depth}x{max_rank}")
        self.events = np.zeros((max_depth, max_rank))
        self.at_risk = np.zeros((max_depth, max_rank))
        self.depth_weight, self.prior_hazard, self.prior_weight = depth_weight, prior_hazard, prior_weight

    def update(self, obs: Sequence[Observation]) -> None:
        depths, ranks = self.events.shape
        for o in obs:
            if o.depth > depths or o.drafted < 1:
                continue
            seen = min(o.drafted, ranks)
            if o.rank is not None and o.rank <= ranks:
                self.events[o.depth - 1, o.rank - 1] += 1
                self.at_risk[o.depth - 1, : o.rank] += 1
            else:
                self.at_risk[o.depth - 1, :seen] += 1

    def hazards(self) -> np.ndarray:
        pooled = ((self.events.sum(0) + self.prior_weight * self.prior_hazard)
                  / (self.at_risk.sum(0) + self.prior_weight))
        return (self.events + self.depth_weight * pooled) / (self.at_risk + self.depth_weight)

    def table(self) -> np.ndarray:
        h = np.clip(self.hazards(), 0.0, 1.0)
        survive = np.cumprod(1.0 - h, axis=1)
        before = np.concatenate([np.ones((h.shape[0], 1)), survive[:, :-1]], axis=1)
        return h * before


class CostFit:
    """Ridge fit of a round's compute ms on (depth, nodes, 1), shrunk towards `prior`: the slopes
    firmly (`strength`), the fixed part barely (`fixed_strength`). While few shapes have been
    played the three terms are not separable (every round of one shape has the same (depth,
    nodes, 1)), and a uniform shrinkage would spread a round's fixed verify cost over the per-depth
    and per-node slopes, pricing every larger shape too dear to ever be tried; the fixed part
    absorbs the level instead, and the slopes move once shapes of other sizes are seen."""

    def __init__(self, prior: tuple[float, float, float] = (1.0, 0.1, 1.0), strength: float = 1.0,
                 fixed_strength: float = 1e-3):
        self.prior = np.asarray(prior, dtype=float)
        self.A = np.diag([strength, strength, fixed_strength])
        self.b = self.A @ self.prior
        self.n = 0

    def update(self, depth: int, nodes: int, compute_ms: float) -> None:
        if not np.isfinite(compute_ms) or compute_ms < 0:
            raise ControlError(f"round compute: expected a finite ms >= 0, got {compute_ms}")
        x = np.array([depth, nodes, 1.0])
        self.A += np.outer(x, x)
        self.b += x * compute_ms
        self.n += 1

    def cost(self) -> TreeCost:
        step, node, fixed = np.maximum(np.linalg.solve(self.A, self.b), 0.0)
        return TreeCost(draft_step_ms=float(step), draft_node_ms=float(node), verify_ms=float(fixed),
                        verify_node_ms=0.0)


def _path_index(trees: Sequence[Tree], width: int) -> tuple[np.ndarray, np.ndarray]:
    """For every node of every tree, the flat table indices along its path (padded with -1, which
    picks a trailing 1.0), and which tree it belongs to: E of all trees is one product and one
    bincount."""
    rows: list[list[int]] = []
    seg: list[int] = []
    for s, tree in enumerate(trees):
        depths, ranks = tree.depths(), tree.ranks()
        idx: list[list[int]] = []
        for i, p in enumerate(tree.parents):
            idx.append((idx[p] if p >= 0 else []) + [(depths[i] - 1) * width + ranks[i] - 1])
        rows += idx
        seg += [s] * len(idx)
    pad = max((len(r) for r in rows), default=1)
    return (np.array([r + [-1] * (pad - len(r)) for r in rows], dtype=np.int64).reshape(len(rows), pad),
            np.array(seg, dtype=np.int64))


class TreeShapeLearner:
    """Chooses each round's draft tree from the rounds it has seen; see the module docstring."""

    def __init__(self, max_depth: int = 16, max_width: int = 3, max_rank: int = 4,
                 tree_sizes: Sequence[int] = TREE_SIZES, explore: float = 2.0, explore_within: float = 1.0,
                 replan_every: int = 16, own_weight: float = 5.0, seed: int = 0):
        if max_width > max_rank:
            raise ControlError(f"tree learner: spines of width {max_width} need ranks up to {max_width}, "
                               f"table has {max_rank}")
        if explore < 0:
            raise ControlError(f"tree learner: explore must be >= 0, got {explore}")
        self.table = RankTable(max_depth, max_rank)
        self.costs = CostFit()
        self.max_rank, self.explore, self.replan_every = max_rank, explore, replan_every
        self.explore_within = explore_within
        self.own_weight = own_weight
        self._seen: dict[Tree, tuple[int, float]] = {}  # shape -> (rounds, total compute ms)
        self.tree_sizes = tuple(n for n in tree_sizes if n >= 1)
        self.rng = np.random.default_rng(seed)
        self.rounds = 0
        fixed = {chain(L) for L in range(1, max_depth + 1)}
        fixed |= {spine(d, w) for d in range(1, max_depth + 1) for w in range(2, max_width + 1)}
        self._fixed = sorted(fixed, key=lambda t: (t.nodes, t.parents))
        self._shapes: list[Tree] = []
        self._planned_at = -1

    def shapes(self) -> list[Tree]:
        """The candidates: fixed chains and spines, and the optimal trees of the table as estimated
        at the last re-plan (every `replan_every` rounds)."""
        if self._planned_at < 0 or self.rounds - self._planned_at >= self.replan_every:
            planned = optimal_tree_set(self.table.table(), self.tree_sizes)
            known = set(self._fixed)
            extra = sorted({t for t, _ in planned.values() if t.nodes and t not in known},
                           key=lambda t: (t.nodes, t.parents))
            self._shapes = self._fixed + extra
            self._idx, self._seg = _path_index(self._shapes, self.max_rank)
            self._depth = np.array([t.depth for t in self._shapes], float)
            self._nodes = np.array([t.nodes for t in self._shapes], float)
            self._planned_at = self.rounds
        return self._shapes

    def predict(self, delay_ms: float, max_depth: int | None = None) -> np.ndarray:
        """Estimated ms/token of each of `shapes()` at this one-way delay; shapes deeper than
        `max_depth` (a request that wants few more tokens) are priced at infinity."""
        shapes = self.shapes()
        flat = np.append(self.table.table().ravel(), 1.0)
        tokens = 1.0 + np.bincount(self._seg, np.prod(flat[self._idx], axis=1), minlength=len(shapes))
        c = self.costs.cost()
        linear = c.draft_step_ms * self._depth + (c.draft_node_ms + c.verify_node_ms) * self._nodes + c.verify_ms
        # a shape played often is priced by its own mean: real compute is not exactly linear, and
        # the fit is pulled by the large shapes exploration tries
        seen = np.array([self._seen.get(t, (0, 0.0)) for t in shapes], float).reshape(len(shapes), 2)
        compute = (seen[:, 1] + self.own_weight * linear) / (seen[:, 0] + self.own_weight)
        j = (compute + 2.0 * delay_ms) / tokens
        if max_depth is not None:
            if max_depth < 1:
                raise ControlError(f"tree learner: max depth must be >= 1, got {max_depth}")
            j[self._depth > max_depth] = np.inf
        return j

    def best(self, delay_ms: float, max_depth: int | None = None) -> Tree:
        """The shape with the least estimated ms/token at this one-way delay (fewest nodes on ties),
        no deeper than `max_depth` when given."""
        if not np.isfinite(delay_ms) or delay_ms < 0:
            raise ControlError(f"tree learner: delay must be a finite ms >= 0, got {delay_ms}")
        j = self.predict(delay_ms, max_depth)
        shapes = self._shapes
        i = min(range(len(shapes)), key=lambda x: (round(float(j[x]), 9), shapes[x].nodes))
        return shapes[i]

    def choose(self, delay_ms: float, max_depth: int | None = None) -> Tree:
        """This round's shape: with probability explore / sqrt(rounds + 1) one drawn uniformly
        among the shapes estimated within `explore_within` (relative) of the best, so costs and
        deeper ranks stay observed without paying for shapes known to be far off; else `best`."""
        if self.rng.random() < min(1.0, self.explore / np.sqrt(self.rounds + 1)):
            j = self.predict(delay_ms, max_depth)
            near = np.flatnonzero(j <= (1.0 + self.explore_within) * j.min())
            return self._shapes[int(near[self.rng.integers(len(near))])]
        return self.best(delay_ms, max_depth)

    def observe(self, tree: Tree, path: Sequence[int], compute_ms: float | None) -> None:
        """A verified round: the shape sent, its accepted nodes (0-based), its compute ms (None: a
        round whose compute is not the shape's, e.g. one whose verify also prefilled the context;
        its path still counts)."""
        self.table.update(observations(tree, path))
        self.rounds += 1
        if compute_ms is None:
            return
        self.costs.update(tree.depth, tree.nodes, compute_ms)
        n, total = self._seen.get(tree, (0, 0.0))
        self._seen[tree] = (n + 1, total + compute_ms)
