"""One chooser of the speculation shape for a measured delay (numpy only, pure).

Five families, each priced by its own model on the same calibration:
  chain        one chain of L drafts per round trip          control.trees (width-1 tree)
  tree         one draft tree per round trip                 control.trees (spines, optimal trees)
  chain-ahead  chains drafted ahead, R rounds in flight      control.ahead_schedule
  tree-ahead   spine trees drafted ahead, R rounds in flight control.ahead_schedule
  stream-tree  the continuous speculation tree               control.stream_tree_cost
The calibration is the depth x rank acceptance table p_{d,k} and the round cost (TreeCost) that
`specstop bench trees --table-out` measures, plus the stream tree's zero-delay compute per token and
misses per token (a calibration run of it; the family is left out without them). A shape drafted
ahead drafts one more token than it sends (the prediction the next round is built on) and is kept
when its whole spine and that prediction hold: kappa = prod_{d <= depth+1} p_{d,1}; it is priced
only where the table reaches depth + 1. The pick is the least modelled ms/token; ties go to the
simpler family (the order above), then fewer nodes, then fewer rounds in flight.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from control.ahead_schedule import run_ms_per_token
from control.stream_tree_cost import stream_tree_ms_per_token
from control.tree_dp import optimal_tree_set
from control.trees import Tree, TreeCost, chain, check_accept, expected_tokens, ms_per_token, spine
from control.types import ControlError

FAMILIES = ("chain", "tree", "chain-ahead", "tree-ahead", "stream-tree")
TREE_SIZES = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class StreamTreeCalibration:
    """The stream tree's zero-delay compute per token, its misses per token (delay-free) and the
    tokens per request (the first token waits a round trip too)."""

    compute_ms_per_token: float
    misses_per_token: float
    new_tokens: int = 64

    def __post_init__(self) -> None:
        if not (np.isfinite(self.compute_ms_per_token) and self.compute_ms_per_token >= 0):
            raise ControlError(f"stream tree: compute ms/token must be finite and >= 0, got {self.compute_ms_per_token}")
        if not 0.0 <= self.misses_per_token <= 1.0:
            raise ControlError(f"stream tree: misses per token must lie in [0, 1], got {self.misses_per_token}")
        if self.new_tokens < 1:
            raise ControlError(f"stream tree: new tokens must be >= 1, got {self.new_tokens}")


@dataclass(frozen=True)
class Calibration:
    """`shared_compute`: draft and verify take turns on one compute (one process, as the in-process
    bench and the workers on one small machine), so drafting ahead cannot hide the draft."""

    accept: np.ndarray
    cost: TreeCost
    stream: StreamTreeCalibration | None = None
    shared_compute: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "accept", check_accept(self.accept))
        if any(not np.isfinite(v) or v < 0 for v in self.cost.__dict__.values()):
            raise ControlError(f"calibration: every round cost must be a finite ms >= 0, got {self.cost}")


@dataclass(frozen=True)
class Shape:
    """`tree` is None for the stream tree; `rounds` is the rounds in flight (1 without drafting ahead)."""

    family: str
    tree: Tree | None
    rounds: int = 1

    @property
    def label(self) -> str:
        if self.family == "stream-tree":
            return "stream tree"
        t = self.tree
        body = f"L{t.nodes}" if t.width == 1 else (f"{t.depth}x{t.width}" if t == spine(t.depth, t.width)
                                                    else f"{t.nodes}-node tree")
        return f"{body} R{self.rounds}" if self.family.endswith("ahead") else body

    def key(self) -> tuple:
        nodes = 0 if self.tree is None else self.tree.nodes
        return FAMILIES.index(self.family), nodes, self.rounds


@dataclass(frozen=True)
class Choice:
    delay_ms: float
    pick: Shape
    ms_per_token: float
    best_by_family: dict[str, tuple[Shape, float]] = field(default_factory=dict)
    reason: str = ""

    def row(self) -> dict:
        return {"delay_ms": self.delay_ms, "pick": self.pick.label, "family": self.pick.family,
                "ms_per_token": round(self.ms_per_token, 3), "reason": self.reason,
                "families": {f: {"shape": s.label, "ms_per_token": round(j, 3)} for f, (s, j) in
                             self.best_by_family.items()}}


def kappa(tree: Tree, accept: np.ndarray) -> float:
    """P(a round drafted ahead is kept): every spine node (rank 1 at each depth) and the prediction
    after it accepted."""
    return float(np.prod(accept[: tree.depth + 1, 0]))


def ahead_round(tree: Tree, cost: TreeCost) -> tuple[float, float]:
    """(draft ms, verify ms) of a round drafted ahead: one more draft step for the prediction."""
    draft = cost.draft_step_ms * (tree.depth + 1) + cost.draft_node_ms * (tree.nodes + 1)
    return draft, cost.verify_ms + cost.verify_node_ms * tree.nodes


def shape_ms_per_token(shape: Shape, cal: Calibration, delay_ms: float) -> float:
    """The modelled ms/token of `shape` at one-way `delay_ms`, by its family's model."""
    if shape.family == "stream-tree":
        if cal.stream is None:
            raise ControlError("stream tree: no calibration of its compute and misses")
        s = cal.stream
        return stream_tree_ms_per_token(s.compute_ms_per_token, s.misses_per_token, delay_ms, s.new_tokens)
    if shape.family in ("chain", "tree"):
        return ms_per_token(shape.tree, cal.accept, cal.cost, delay_ms)
    if shape.tree.depth + 1 > cal.accept.shape[0]:
        raise ControlError(f"{shape.label}: drafting ahead needs the table to reach depth {shape.tree.depth + 1}")
    draft, verify = ahead_round(shape.tree, cal.cost)
    return run_ms_per_token(draft, verify, delay_ms, shape.rounds, kappa(shape.tree, cal.accept),
                            expected_tokens(shape.tree, cal.accept), cal.shared_compute)


def candidates(cal: Calibration, max_nodes: int = 64, max_width: int = 3, max_rounds: int = 5,
               tree_sizes: Sequence[int] = TREE_SIZES) -> list[Shape]:
    """Every shape the chooser weighs: chains up to the table's depth, spines up to `max_width` and
    the optimal trees of `tree_sizes` (<= max_nodes); chains and spines drafted ahead with 1..
    `max_rounds` rounds in flight (spines only: a kept round needs a spine, as the workers do); the
    stream tree when calibrated."""
    if max_nodes < 1 or max_width < 1 or max_rounds < 1:
        raise ControlError(f"shapes: max nodes, width and rounds must be >= 1, got {max_nodes}, {max_width}, "
                           f"{max_rounds}")
    depth, ranks = cal.accept.shape
    chains = [chain(L) for L in range(1, min(depth, max_nodes) + 1)]
    spines = [spine(d, w) for w in range(2, min(max_width, ranks) + 1) for d in range(1, depth + 1)
              if d * w <= max_nodes]
    sizes = [n for n in tree_sizes if n <= max_nodes]
    optimal = {t for t, _ in optimal_tree_set(cal.accept, sizes).values() if t.width >= 2} if sizes else set()
    trees = spines + sorted(optimal - set(spines), key=lambda t: (t.nodes, t.parents))
    out = [Shape("chain", t) for t in chains] + [Shape("tree", t) for t in trees]
    out += [Shape("chain-ahead", t, r) for t in chains if t.depth < depth for r in range(1, max_rounds + 1)]
    out += [Shape("tree-ahead", t, r) for t in spines if t.depth < depth for r in range(1, max_rounds + 1)]
    if cal.stream is not None:
        out.append(Shape("stream-tree", None))
    return out


def choose(cal: Calibration, delay_ms: float, shapes: Sequence[Shape] | None = None, margin: float = 0.0) -> Choice:
    """The shape of least modelled ms/token at `delay_ms`, the best of every family, and why. With
    `margin` > 0 another family displaces the best plain chain (today's proven path) only when it
    models more than `margin` (relative) below it: the models are approximations, and a shape
    they price within their own error of the chain is not worth its extra draft work."""
    if not np.isfinite(delay_ms) or delay_ms < 0:
        raise ControlError(f"shape choice: delay must be a finite ms >= 0, got {delay_ms}")
    if not (np.isfinite(margin) and 0.0 <= margin < 1.0):
        raise ControlError(f"shape choice: margin must lie in [0, 1), got {margin}")
    shapes = list(candidates(cal) if shapes is None else shapes)
    if not shapes:
        raise ControlError("shape choice: no candidate shapes")
    priced = [(s, float(shape_ms_per_token(s, cal, delay_ms))) for s in shapes]
    best: dict[str, tuple[Shape, float]] = {}
    for s, j in priced:
        if s.family not in best or (round(j, 9), s.key()) < (round(best[s.family][1], 9), best[s.family][0].key()):
            best[s.family] = (s, j)
    family = min(best, key=lambda f: (round(best[f][1], 9), best[f][0].key()))
    if margin and "chain" in best and best[family][1] > (1.0 - margin) * best["chain"][1]:
        family = "chain"
    pick, j = best[family]
    ordered = {f: best[f] for f in FAMILIES if f in best}
    return Choice(delay_ms, pick, j, ordered, _reason(pick, j, ordered, delay_ms))


def _reason(pick: Shape, j: float, best: dict[str, tuple[Shape, float]], delay_ms: float) -> str:
    others = [(f, s, x) for f, (s, x) in best.items() if f != pick.family]
    if not others:
        return f"{pick.label}: the only family priced ({j:.2f} ms/token at {delay_ms:g} ms)"
    f, s, x = min(others, key=lambda o: o[2])
    return (f"{pick.family} {pick.label} models {j:.2f} ms/token at {delay_ms:g} ms one-way, "
            f"{x / j:.2f}x below the next family ({f} {s.label}, {x:.2f})")
