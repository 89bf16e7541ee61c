"""The pair's depth x rank acceptance table and round-cost fit, for pricing draft trees.

Calibration by teacher forcing: the target's greedy continuation of each prompt (what every
lossless round emits), then one draft forward over it gives the rank of each target token in
the draft's ordering. A tree whose nodes are the draft's top-k children accepts the target's
token at depth d exactly when its rank there is drafted, and along an accepted path the draft
sees the target's own tokens, so these ranks are what a tree round meets. From every start
position the walk down the depths is a round of the full width-`ranks` tree, fed to
control.tree_shape.RankTable (the learner's own censored estimate, shrunk across depths).
"""
from __future__ import annotations

import numpy as np
import torch

from control.tree_shape import Observation, RankTable
from control.trees import TreeCost, chain
from nodes.models.tree_verify import tree_generate


@torch.inference_mode()
def target_ranks(pair, prompt: list[int], continuation: list[int]) -> list[int]:
    """Rank (1 = the draft's argmax) of each continuation token in the draft's next-token logits."""
    ids = torch.tensor([prompt + continuation], device=next(pair.draft.parameters()).device)
    logits = pair.draft(input_ids=ids).logits[0, :, : pair.vocab_size].float()
    out = []
    for i, tok in enumerate(continuation):
        row = logits[len(prompt) - 1 + i]
        out.append(1 + int((row > row[tok]).sum()))
    return out


def calibrate(pair, prompts: list[list[int]], tokens: int, depth: int, ranks: int) -> tuple[RankTable, dict]:
    table = RankTable(depth, ranks)
    seen = []
    for prompt in prompts:
        cont = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, tokens, chain(8)).tokens
        r = target_ranks(pair, prompt, cont)
        seen += r
        for s in range(len(r)):
            obs = []
            for d in range(1, min(depth, len(r) - s) + 1):
                k = r[s + d - 1]
                obs.append(Observation(d, ranks, k if k <= ranks else None))
                if k > ranks:
                    break
            table.update(obs)
    hist = np.bincount(np.minimum(seen, ranks + 1), minlength=ranks + 2)[1:]
    return table, {"tokens": len(seen), "rank_share": [round(float(x) / len(seen), 4) for x in hist],
                   "table_depth": depth, "table_ranks": ranks}


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
