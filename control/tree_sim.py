"""Simulated tree rounds: the shape learner against the oracle shape and the best fixed chain.

A round draws, per depth, the rank of the target's token among the draft's candidates from
p_{d,.} (a miss with probability 1 - sum_k p_{d,k}); the walk goes down while that rank is
among the node's drafted children. So a node is accepted with the product of p along its path,
exactly what control.trees.expected_tokens sums. Round time = the true
TreeCost.round_ms(depth, nodes) * (1 + jitter * U[-1, 1]) + 2 delay. Every contender sees the
same uniforms in round r of seed s (common random numbers), so differences are the shapes'.
ms/token is total time / total tokens over all rounds, the learner's exploration included.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from control.tree_dp import optimal_tree_set
from control.tree_shape import TreeShapeLearner
from control.trees import Tree, TreeCost, best_shape, chain, check_accept, ms_per_token, spine
from control.types import ControlError


def draw_ranks(accept: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Rank (1-based) of the target's token at each depth for uniforms `u` (0 = past the table)."""
    cum = np.cumsum(accept, axis=1)
    r = (u[:, None] >= cum).sum(axis=1) + 1
    return np.where(r > accept.shape[1], 0, r)


def walk(tree: Tree, ranks: np.ndarray) -> list[int]:
    """Accepted nodes (0-based) of `tree` when the target's token at depth d has rank ranks[d-1]."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(tree.parents):
        kids.setdefault(p, []).append(i)
    path, node = [], -1
    for r in ranks:
        children = kids.get(node, [])
        if r < 1 or r > len(children):
            break
        node = children[r - 1]
        path.append(node)
    return path


def oracle_shapes(accept: np.ndarray, max_nodes: int) -> list[Tree]:
    """Every chain and spine the table's depth and ranks allow, and the optimal tree of each size."""
    depth, ranks = accept.shape
    shapes = {chain(L) for L in range(1, depth + 1)}
    shapes |= {spine(d, w) for d in range(1, depth + 1) for w in range(2, ranks + 1) if d * w <= max_nodes}
    shapes |= {t for t, _ in optimal_tree_set(accept, range(1, max_nodes + 1)).values() if t.nodes}
    return sorted(shapes, key=lambda t: (t.nodes, t.parents))


def _shape(t: Tree) -> dict:
    return {"depth": t.depth, "width": t.width, "nodes": t.nodes}


def run(choose: Callable[[], Tree], observe: Callable[[Tree, list[int], float], None] | None,
        accept: np.ndarray, cost: TreeCost, delay_ms: float, rounds: int, seed: int, jitter: float) -> dict:
    """One contender for `rounds` rounds; returns realized ms/token and the shapes it used."""
    rng = np.random.default_rng(seed)
    total_ms = tokens = 0.0
    used: dict[Tree, int] = {}
    for _ in range(rounds):
        u = rng.random(accept.shape[0])
        noise = 1.0 + jitter * (2.0 * rng.random() - 1.0)
        tree = choose()
        path = walk(tree, draw_ranks(accept, u))
        compute = cost.round_ms(tree.depth, tree.nodes) * noise
        total_ms += compute + 2.0 * delay_ms
        tokens += len(path) + 1
        used[tree] = used.get(tree, 0) + 1
        if observe is not None:
            observe(tree, path, compute)
    return {"ms_per_token": total_ms / tokens, "tokens_per_round": tokens / rounds, "used": used}


def simulate_trees(accept: np.ndarray, cost: TreeCost, delays_ms: Sequence[float], rounds: int = 2000,
                   seeds: int = 5, jitter: float = 0.1, max_nodes: int = 128, learner_args: dict | None = None) -> dict:
    """Per delay: the oracle shape (best over chains, spines and every optimal n-node tree of the
    true table, n <= max_nodes) and the best chain, in expectation and realized; the learner's
    realized ms/token and its last greedy shape, with ratios to both. The learner plans as deep as
    the table (unless `learner_args` says otherwise) and knows nothing else of it."""
    a = check_accept(accept)
    if rounds < 1 or seeds < 1:
        raise ControlError(f"tree simulation: rounds and seeds must be >= 1, got {rounds}, {seeds}")
    chains = [chain(L) for L in range(1, a.shape[0] + 1)]
    shapes = oracle_shapes(a, max_nodes)
    rows = []
    for delay in delays_ms:
        oracle, oracle_j = best_shape(a, cost, delay, shapes)
        best_chain, chain_j = best_shape(a, cost, delay, chains)
        realized: dict[str, list[float]] = {"oracle": [], "best_chain": [], "learner": []}
        learner_final: list[float] = []
        finals = []
        for s in range(seeds):
            realized["oracle"].append(run(lambda: oracle, None, a, cost, delay, rounds, s, jitter)["ms_per_token"])
            realized["best_chain"].append(
                run(lambda: best_chain, None, a, cost, delay, rounds, s, jitter)["ms_per_token"])
            learner = TreeShapeLearner(seed=s, **({"max_depth": a.shape[0]} | (learner_args or {})))
            res = run(lambda: learner.choose(delay), learner.observe, a, cost, delay, rounds, s, jitter)
            realized["learner"].append(res["ms_per_token"])
            final = learner.best(delay)
            finals.append(final)
            learner_final.append(ms_per_token(final, a, cost, delay))
        mean = {k: float(np.mean(v)) for k, v in realized.items()}
        rows.append({
            "delay_ms": delay,
            "oracle": {**_shape(oracle), "expected_ms_per_token": round(oracle_j, 3),
                       "ms_per_token": round(mean["oracle"], 3)},
            "best_chain": {"length": best_chain.nodes, "expected_ms_per_token": round(chain_j, 3),
                           "ms_per_token": round(mean["best_chain"], 3)},
            "learner": {"ms_per_token": round(mean["learner"], 3),
                        "gap_to_oracle_pct": round(100 * (mean["learner"] / mean["oracle"] - 1), 2),
                        "final_shapes": [_shape(t) for t in finals],
                        "final_expected_ms_per_token": round(float(np.mean(learner_final)), 3),
                        "final_gap_to_oracle_pct": round(100 * (float(np.mean(learner_final)) / oracle_j - 1), 2)},
            "chain_over_oracle": round(chain_j / oracle_j, 3),
            "chain_over_learner": round(mean["best_chain"] / mean["learner"], 3),
        })
    return {"rounds": rounds, "seeds": seeds, "jitter": jitter, "max_nodes": max_nodes,
            "table_shape": list(a.shape), "cost": cost.__dict__, "rows": rows}


def load_tree_table(path: str | Path) -> tuple[np.ndarray, TreeCost]:
    """A measured acceptance table and round cost, as `specstop bench trees --table-out` writes:
    {"accept": depth x rank rows, "cost": TreeCost's four fields in ms}."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ControlError(f"tree table {p}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"tree table {p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "accept" not in data or "cost" not in data:
        raise ControlError(f"tree table {p}: expected an object with 'accept' and 'cost'")
    try:
        accept = check_accept(np.asarray(data["accept"], dtype=float))
        cost = TreeCost(**{k: float(data["cost"][k]) for k in TreeCost.__dataclass_fields__})
    except (TypeError, ValueError, KeyError) as exc:
        raise ControlError(f"tree table {p}: bad 'accept' or 'cost' ({exc})") from None
    except ControlError as exc:
        raise ControlError(f"tree table {p}: {exc}") from None
    if any(not np.isfinite(v) or v < 0 for v in cost.__dict__.values()):
        raise ControlError(f"tree table {p}: every cost must be a finite ms >= 0")
    return accept, cost
