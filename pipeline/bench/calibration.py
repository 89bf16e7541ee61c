"""The pair's depth x rank acceptance table and round-cost fit, for pricing draft trees.

The table is estimated from verified tree rounds, with control.tree_shape.RankTable (the online
learner's own censored estimate): each round's accepted path gives the accepted rank at every
depth it reached and a miss where it stopped. Real rounds matter: a round starts right after the
target corrected the draft, where the draft is weaker than on average, so ranks measured at every
position of a text (teacher forcing) overstate acceptance (by 0.1 at depth 1 on the bundled pair).
The calibration pass runs a deep, wide spine so every depth and the first `ranks` ranks are seen.
"""
from __future__ import annotations

import numpy as np

from control.tree_shape import RankTable, observations
from control.trees import TreeCost, spine
from nodes.models.tree_verify import TreeGeneration, tree_generate


def add_rounds(table: RankTable, tree, generation: TreeGeneration) -> int:
    """Feed a generation's rounds to the table; returns how many."""
    for r in generation.rounds:
        table.update(observations(tree, r.path))
    return len(generation.rounds)


def calibrate(pair, prompts: list[list[int]], tokens: int, depth: int, ranks: int) -> tuple[RankTable, dict]:
    """A table from rounds of the depth x ranks spine over `prompts`, `tokens` new tokens each."""
    table = RankTable(depth, ranks)
    probe = spine(depth, ranks)
    rounds = sum(add_rounds(table, probe, tree_generate(pair.draft, pair.target, pair.vocab_size, p, tokens, probe))
                 for p in prompts)
    return table, {"probe": f"spine {depth}x{ranks}", "prompts": len(prompts), "rounds": rounds}


def fit_cost(rows: list[dict]) -> TreeCost:
    """Least squares over measured rows: draft ms on (depth, nodes), verify ms on (1, nodes)."""
    depth = np.array([r["depth"] for r in rows], float)
    nodes = np.array([r["nodes"] for r in rows], float)
    draft = np.array([r["draft_ms_per_round"] for r in rows], float)
    verify = np.array([r["verify_ms_per_round"] for r in rows], float)
    step, node = np.maximum(np.linalg.lstsq(np.stack([depth, nodes], 1), draft, rcond=None)[0], 0.0)
    fixed, vnode = np.maximum(np.linalg.lstsq(np.stack([np.ones_like(nodes), nodes], 1), verify, rcond=None)[0], 0.0)
    return TreeCost(draft_step_ms=round(float(step), 4), draft_node_ms=round(float(node), 4),
                    verify_ms=round(float(fixed), 4), verify_node_ms=round(float(vnode), 4))
