"""Which tree a round drafts: a fixed DEPTHxWIDTH spine, or under `auto` the shape that
control.tree_shape's online learner (no profile) prices cheapest per token at the delay the edge
measured, from the edge's own tree rounds. No transport and no model here."""
from __future__ import annotations

import numpy as np

from control.shape_choice import Calibration, Shape, shape_ms_per_token
from control.tree_shape import TREE_SIZES, TreeShapeLearner
from control.trees import Tree, chain, spine
from control.types import ControlError
from schemas.trees import MAX_TREE_NODES

AUTO = "auto"
# Exploration at an edge: a live edge sees hundreds of rounds, not the simulator's thousands, so it
# explores less often (1/sqrt(rounds)) and only among shapes priced within 50 % of the best.
EDGE_EXPLORE = 1.0
EDGE_EXPLORE_WITHIN = 0.5


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


class TreeShaper:
    """One edge's tree shapes, round by round: the fixed spine of `--tree DxW`, or under `auto`
    control.tree_shape's online learner with no profile. The learner is told every tree round of
    the edge (all its requests: the pair and the machine are the same for all of them): the path
    the verifier accepted (accepted rank per depth, censored where it stopped) and the compute the
    round measured (draft, as the device took it when emulated, plus the verdict's verify time). It
    chooses at the one-way delay the edge measured among chains (a width-1 tree: at 0 ms it falls
    back to them), spines and the optimal trees of its estimated table, no deeper than the edge's
    `--max-length` nor larger than the wire takes."""

    def __init__(self, spec: Tree | str | None, max_depth: int, seed: int = 0,
                 explore: float = EDGE_EXPLORE, explore_within: float = EDGE_EXPLORE_WITHIN):
        if max_depth < 1:
            raise ControlError(f"tree shapes: max depth must be >= 1, got {max_depth}")
        self.spec, self.max_depth = spec, max_depth
        self.learner = TreeShapeLearner(
            max_depth=max_depth, max_width=3, max_rank=4, explore=explore, explore_within=explore_within,
            tree_sizes=[n for n in TREE_SIZES if n <= MAX_TREE_NODES], seed=seed) if spec == AUTO else None

    def choose(self, delay_ms: float, wanted: int) -> Tree | None:
        """The round's shape, or None when only the target's own token is still `wanted`."""
        if wanted <= 1 or self.spec is None:
            return None
        depth = max(1, min(self.max_depth, wanted - 1))
        if self.learner is None:
            assert isinstance(self.spec, Tree)
            return self.spec if self.spec.depth <= depth else spine(depth, self.spec.width)
        return self.learner.choose(delay_ms, depth)

    def choose_ahead(self, delay_ms: float, max_depth: int, rounds: int) -> Tree:
        """A round drafted ahead under `auto` (`--tree auto --ahead R`): a spine or a chain no deeper
        than `max_depth` (a kept round needs its whole spine, so only spines are drafted ahead), the
        one control.shape_choice prices cheapest per token with `rounds` in flight, on the learner's
        estimated acceptance table and round cost; explored as `choose` explores. Re-priced when the
        learner re-plans, or the delay moves by more than a millisecond."""
        if self.learner is None:
            raise ControlError("tree shapes: choose_ahead is for --tree auto")
        if self.max_depth < 2:  # no table row for the prediction after a spine: one draft, chain-like
            return chain(1)
        lrn = self.learner
        depth = max(1, min(self.max_depth - 1, max_depth))  # the table must reach the prediction's depth
        key = (round(delay_ms), depth, rounds, lrn.rounds // lrn.replan_every)
        if getattr(self, "_ahead_key", None) != key:
            cal = Calibration(lrn.table.table(), lrn.costs.cost())
            shapes = [chain(d) if w == 1 else spine(d, w) for d in range(1, depth + 1) for w in range(1, 4)
                      if d * w <= MAX_TREE_NODES]
            family = {1: "chain-ahead"}
            costs = np.array([shape_ms_per_token(Shape(family.get(t.width, "tree-ahead"), t, rounds), cal, delay_ms)
                              for t in shapes])
            self._ahead_key, self._ahead = key, (shapes, costs)
        shapes, costs = self._ahead
        if lrn.rng.random() < min(1.0, lrn.explore / np.sqrt(lrn.rounds + 1)):
            near = np.flatnonzero(costs <= (1.0 + lrn.explore_within) * costs.min())
            return shapes[int(near[lrn.rng.integers(len(near))])]
        return shapes[int(np.argmin(costs))]

    def observe(self, parents: list[int], path: list[int], draft_ms: float, verify_ms: float,
                prefilled: bool = False) -> None:
        """A verified tree round: its shape, accepted nodes (0-based), and measured compute ms.
        `prefilled`: the verifier also prefilled the context in that round (a request's first
        round, a resend): its path counts, its compute (several times a round's) does not."""
        if self.learner is not None and parents:
            self.learner.observe(Tree(tuple(parents)), path, None if prefilled else draft_ms + verify_ms)
