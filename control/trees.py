"""Theory of draft-tree shapes: when drafting several candidates per position pays.

A draft tree hangs off the last accepted token (the root). Each drafted node has a depth
d >= 1 and a rank k >= 1 among its siblings (rank 1 = the draft's most likely child).
`accept[d-1, k-1]` = p_{d,k} = P(the rank-k child at depth d is the one accepted | its
parent was accepted): siblings exclude each other, so each row sums to <= 1. A node is
accepted with the product of p along its path, and a round yields on average
E = 1 + sum over nodes of that product (the 1 is the target's own token). A chain is the
width-1 tree, so with p_{d,1} = S(d)/S(d-1) this is B(L) of control.theory.

Children of a node must hold ranks 1..c with no gap: p_{d,k} is measured for the k-th
best candidate, which only exists as the k-th drafted child when ranks 1..k-1 are drafted.

A round costs `TreeCost.round_ms(depth, nodes) + 2 * delay`: the draft runs one batched
step per depth plus a per-node share, the verify a fixed part plus a per-node share.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from control.types import ControlError


@dataclass(frozen=True)
class Tree:
    """`parents[i]`: index of node i's parent (-1 = the root); parents come before children."""

    parents: tuple[int, ...]

    def __post_init__(self) -> None:
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ControlError(f"tree: node {i} has parent {p}, which is not an earlier node or -1")

    @property
    def nodes(self) -> int:
        return len(self.parents)

    def depths(self) -> list[int]:
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    def ranks(self) -> list[int]:
        seen: dict[int, int] = {}
        out = []
        for p in self.parents:
            seen[p] = seen.get(p, 0) + 1
            out.append(seen[p])
        return out

    @property
    def depth(self) -> int:
        return max(self.depths(), default=0)

    @property
    def width(self) -> int:
        """Most nodes at one depth (what one batched draft step carries)."""
        d = self.depths()
        return max((d.count(x) for x in set(d)), default=0)


def chain(length: int) -> Tree:
    return Tree(tuple(range(-1, length - 1)))


def spine(depth: int, width: int) -> Tree:
    """The depth x width family: at every depth `width` candidates under the rank-1 node of the
    depth above, so only the draft's best guess is extended (depth*width nodes, one batched
    step per depth)."""
    if depth < 1 or width < 1:
        raise ControlError(f"tree shape: depth and width must be >= 1, got {depth}x{width}")
    parents: list[int] = []
    head = -1
    for _ in range(depth):
        first = len(parents)
        parents.extend([head] * width)
        head = first
    return Tree(tuple(parents))


def check_accept(accept: np.ndarray) -> np.ndarray:
    a = np.asarray(accept, dtype=float)
    if a.ndim != 2 or a.size == 0:
        raise ControlError(f"acceptance table: expected a 2-D depth x rank array, got shape {a.shape}")
    if np.any(a < 0) or np.any(a > 1) or not np.all(np.isfinite(a)):
        raise ControlError("acceptance table: every p_{d,k} must lie in [0, 1]")
    if np.any(a.sum(axis=1) > 1 + 1e-9):
        raise ControlError("acceptance table: a depth's ranks exclude each other, so each row must sum to <= 1")
    return a


def expected_tokens(tree: Tree, accept: np.ndarray) -> float:
    """E = 1 + sum over nodes of P(node accepted)."""
    a = check_accept(accept)
    depths, ranks = tree.depths(), tree.ranks()
    prob: list[float] = []
    for i, p in enumerate(tree.parents):
        d, k = depths[i], ranks[i]
        pk = a[d - 1, k - 1] if d <= a.shape[0] and k <= a.shape[1] else 0.0
        prob.append(pk * (1.0 if p < 0 else prob[p]))
    return 1.0 + float(sum(prob))


@dataclass(frozen=True)
class TreeCost:
    """Round compute in ms: draft_step_ms per depth (one batched draft forward per depth),
    draft_node_ms and verify_node_ms per node, verify_ms once."""

    draft_step_ms: float
    draft_node_ms: float
    verify_ms: float
    verify_node_ms: float

    def round_ms(self, depth: int, nodes: int) -> float:
        return (self.draft_step_ms * depth + self.draft_node_ms * nodes
                + self.verify_ms + self.verify_node_ms * nodes)


def ms_per_token(tree: Tree, accept: np.ndarray, cost: TreeCost, delay_ms: float) -> float:
    return (cost.round_ms(tree.depth, tree.nodes) + 2.0 * delay_ms) / expected_tokens(tree, accept)


def optimal_trees(accept: np.ndarray, max_nodes: int) -> list[tuple[Tree, float]]:
    """For n = 1..max_nodes the tree of n nodes with the largest E (Sequoia's dynamic programme,
    with depth-dependent p): f(d, m) = best E-contribution of a subtree whose root sits at
    depth d and holds m nodes (root included, counted 1); its children take ranks 1, 2, ... and
    share the m-1 nodes as a knapsack. Depth is bounded by the table's rows."""
    a = check_accept(accept)
    depth_max, width_max = a.shape

    @lru_cache(maxsize=None)
    def f(d: int, m: int) -> tuple[float, tuple]:
        # returns (value, children) where children is a tuple of subtrees (each a children tuple)
        if m == 1 or d >= depth_max:
            return 1.0, ()
        v, kids = g(d, 1, m - 1)
        return 1.0 + v, kids

    @lru_cache(maxsize=None)
    def g(d: int, k: int, m: int) -> tuple[float, tuple]:
        if m == 0 or k > width_max:
            return 0.0, ()
        best: tuple[float, tuple] = (0.0, ())
        for j in range(1, m + 1):
            sub_v, sub_kids = f(d + 1, j)
            rest_v, rest = g(d, k + 1, m - j)
            v = a[d, k - 1] * sub_v + rest_v
            if v > best[0] + 1e-15:
                best = (v, (sub_kids,) + rest)
        return best

    out = []
    for n in range(1, max_nodes + 1):
        v, kids = f(0, n + 1)
        out.append((_flatten(kids), v))
    return out


def _flatten(kids: tuple) -> Tree:
    parents: list[int] = []
    queue = [(-1, kids)]
    while queue:
        parent, children = queue.pop(0)
        for c in children:
            parents.append(parent)
            queue.append((len(parents) - 1, c))
    return Tree(tuple(parents))


def candidate_shapes(accept: np.ndarray, max_nodes: int, max_depth: int = 8, max_width: int = 3) -> list[Tree]:
    """Chains, the depth x width family and the per-size optimal trees, without duplicates."""
    shapes = {chain(n) for n in range(1, max_nodes + 1)}
    shapes |= {spine(d, w) for d in range(1, max_depth + 1) for w in range(1, max_width + 1)
               if d * w <= max_nodes}
    shapes |= {t for t, _ in optimal_trees(accept, max_nodes) if t.nodes}
    return sorted(shapes, key=lambda t: (t.nodes, t.parents))


def best_shape(accept: np.ndarray, cost: TreeCost, delay_ms: float, shapes: list[Tree]) -> tuple[Tree, float]:
    """argmin ms/token over `shapes` (fewest nodes on ties)."""
    if not shapes:
        raise ControlError("best shape: no shapes given")
    j = [ms_per_token(t, accept, cost, delay_ms) for t in shapes]
    i = min(range(len(shapes)), key=lambda x: (j[x], shapes[x].nodes, x))
    return shapes[i], j[i]


def critical_delay(accept: np.ndarray, cost: TreeCost, shapes: list[Tree]) -> float:
    """Smallest one-way delay at which some tree of width >= 2 in `shapes` beats every chain
    in `shapes` (inf if none ever does). J is (C + 2d)/E, so tree t beats chain c on a
    half-line of d; t beats all chains on the intersection of those half-lines."""
    chains = [s for s in shapes if s.width == 1]
    trees = [s for s in shapes if s.width >= 2]
    if not chains:
        raise ControlError("critical delay: no chain among the shapes")
    best = np.inf
    for t in trees:
        et, ct = expected_tokens(t, accept), cost.round_ms(t.depth, t.nodes)
        lo, hi = 0.0, np.inf
        for c in chains:
            ec, cc = expected_tokens(c, accept), cost.round_ms(c.depth, c.nodes)
            # t beats c  <=>  2d (et - ec) > ct*ec - cc*et
            rhs = ct * ec - cc * et
            if et > ec:
                lo = max(lo, rhs / (2.0 * (et - ec)))
            elif et < ec:
                hi = min(hi, rhs / (2.0 * (et - ec)))
            elif rhs >= 0:
                hi = -np.inf
        if lo < hi:
            best = min(best, lo)
    return float(best)
