"""`specstop bench trees`: chain vs draft trees on a model pair, in one process.

Per shape (depth x width spine of control.trees; width 1 = the chain) it runs tree_generate
greedily on a few prompts, `repeats` times, and reports medians of: tokens per target forward,
draft and verify ms per round, and ms/token modelled at each one-way delay as
(draft + verify + 2 delay) / tokens per round. The delay is modelled, not slept, so the table
shows where a tree's extra compute is paid back by fewer round trips.

With `optimal_nodes`, a calibration pass first measures the pair's depth x rank acceptance table
(calibration.py), then the Sequoia-optimal tree of each size for that table runs the same way;
`best` then also names the best optimal tree and the best shape overall per delay, with its
ratio to the best chain.
"""
from __future__ import annotations

import statistics

import numpy as np
import torch

from control.tree_dp import optimal_tree_set
from control.tree_shape import RankTable, TreeShapeLearner
from control.trees import Tree, TreeCost, chain, expected_tokens, ms_per_token, spine
from nodes.models.loading import load_pair
from nodes.models.tree_verify import tree_generate
from pipeline.bench.calibration import add_rounds, calibrate, fit_cost

PROMPTS = ["The cat sat on", "Once upon a time", "def add(a, b):"]
# calibration sees the bench's prompts and a few more, over the bench's own horizon: a small
# model's greedy text drifts into easy repetition, so a longer horizon overstates acceptance
CALIBRATION_PROMPTS = PROMPTS + ["In the morning the", "She opened the door and", "import numpy as np\n",
                                 "The results show that", "for i in range(10):"]


def _run(pair, prompts: list[list[int]], shape, max_new: int, table: RankTable | None = None
         ) -> tuple[float, float, float]:
    """(tokens per round, draft ms per round, verify ms per round) over all prompts; the rounds'
    accepted paths go to `table` when given."""
    tokens = rounds = 0
    draft = verify = 0.0
    for prompt in prompts:
        g = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, max_new, shape)
        if table is not None:
            add_rounds(table, shape, g)
        tokens += sum(len(r.emitted) for r in g.rounds)
        rounds += len(g.rounds)
        draft += sum(r.draft_ms for r in g.rounds)
        verify += sum(r.verify_ms for r in g.rounds)
    return tokens / rounds, draft / rounds, verify / rounds


def _row(pair, prompts, shape: Tree, kind: str, repeats: int, max_new: int, delays_ms,
         table: RankTable | None = None) -> dict:
    runs = [_run(pair, prompts, shape, max_new, table if i == 0 else None) for i in range(repeats)]
    tpr = statistics.median(r[0] for r in runs)
    dms = statistics.median(r[1] for r in runs)
    vms = statistics.median(r[2] for r in runs)
    return {"depth": shape.depth, "width": shape.width, "nodes": shape.nodes, "kind": kind,
            "tokens_per_target_forward": round(tpr, 3), "draft_ms_per_round": round(dms, 2),
            "verify_ms_per_round": round(vms, 2),
            "ms_per_token": {str(int(D)): round((dms + vms + 2 * D) / tpr, 2) for D in delays_ms}}


def _best(rows: list[dict], delays_ms, kinds: tuple[str, ...]) -> dict:
    best = {}
    for D in delays_ms:
        key = str(int(D))
        for kind in kinds:
            r = min((x for x in rows if x["kind"] == kind), key=lambda x: x["ms_per_token"][key], default=None)
            if r is not None:
                best[f"{kind}@{key}ms"] = {"depth": r["depth"], "width": r["width"],
                                          "ms_per_token": r["ms_per_token"][key]}
                if kind == "optimal":
                    best[f"{kind}@{key}ms"]["nodes"] = r["nodes"]
    return best


def ceiling(accept: np.ndarray, cost: TreeCost, delays_ms, max_nodes: int) -> dict:
    """What trees alone could do on this table and cost, modelled: per delay the best optimal tree
    of up to `max_nodes` nodes against the best chain, and the tokens per round a 1.5x win over
    that chain would need at the best tree's compute."""
    trees = [t for t, _ in optimal_tree_set(accept, range(1, max_nodes + 1)).values() if t.nodes]
    chains = [chain(L) for L in range(1, accept.shape[0] + 1)]
    out = {}
    for D in delays_ms:
        t = min(trees, key=lambda x: ms_per_token(x, accept, cost, D))
        c = min(chains, key=lambda x: ms_per_token(x, accept, cost, D))
        jt, jc = ms_per_token(t, accept, cost, D), ms_per_token(c, accept, cost, D)
        out[str(int(D))] = {"tree": {"nodes": t.nodes, "depth": t.depth, "width": t.width,
                                     "tokens_per_round": round(expected_tokens(t, accept), 3),
                                     "ms_per_token": round(jt, 2)},
                            "chain": {"length": c.nodes, "tokens_per_round": round(expected_tokens(c, accept), 3),
                                      "ms_per_token": round(jc, 2)},
                            "chain_over_tree": round(jc / jt, 3),
                            "tokens_for_1_5x": round(1.5 * (cost.round_ms(t.depth, t.nodes) + 2 * D) / jc, 2)}
    return out


def online(pair, prompts: list[list[int]], delay_ms: float, rounds: int, max_new: int, depth: int,
           seed: int = 0) -> tuple[dict, Tree]:
    """The shape learner driving real rounds from no profile at a modelled delay: each round's
    shape is its choice, it is told the accepted path and the measured draft + verify ms."""
    learner = TreeShapeLearner(max_depth=depth, seed=seed)
    spent: list[tuple[float, int]] = []

    def seen(tree: Tree, r) -> None:
        compute = r.draft_ms + r.verify_ms
        learner.observe(tree, r.path, compute)
        spent.append((compute + 2 * delay_ms, len(r.emitted)))

    i = 0
    while len(spent) < rounds:
        tree_generate(pair.draft, pair.target, pair.vocab_size, prompts[i % len(prompts)], max_new,
                      lambda: learner.choose(delay_ms), on_round=seen)
        i += 1
    half = spent[len(spent) // 2:]
    final = learner.best(delay_ms)
    return ({"rounds": len(spent),
             "ms_per_token": round(sum(t for t, _ in spent) / sum(n for _, n in spent), 2),
             "ms_per_token_second_half": round(sum(t for t, _ in half) / sum(n for _, n in half), 2),
             "final_shape": {"depth": final.depth, "width": final.width, "nodes": final.nodes}}, final)


def bench_trees(draft: str | None = None, target: str | None = None, threads: int = 2, repeats: int = 3,
                max_new_tokens: int = 32, depths: range = range(1, 9), widths: range = range(1, 4),
                delays_ms: tuple[float, ...] = (0.0, 50.0), device: str = "cpu", dtype: str | None = None,
                optimal_nodes: tuple[int, ...] = (), table_depth: int = 24, table_ranks: int = 8,
                calibration_tokens: int | None = None, ceiling_nodes: int = 512,
                online_rounds: int = 0) -> dict:
    torch.set_num_threads(threads)
    pair = load_pair(draft, target, device=device, dtype=dtype)
    prompts = [list(pair.tokenizer.encode(t)) for t in PROMPTS]
    _run(pair, prompts, spine(2, 2), 8)  # warm-up: first forwards pay one-off allocation
    # greedy rounds repeat exactly, so only a shape's first repeat informs the table
    table = RankTable(table_depth, table_ranks) if optimal_nodes else None
    rows = [_row(pair, prompts, spine(d, w), "chain" if w == 1 else "tree", repeats, max_new_tokens, delays_ms, table)
            for d in depths for w in widths]
    res = {"pair": [pair.draft_name, pair.target_name], "repeats": repeats, "max_new_tokens": max_new_tokens,
           "prompts": len(PROMPTS), "shape_family": "spine: depth levels of width candidates, rank 1 extended",
           "rows": rows, "best": _best(rows, delays_ms, ("chain", "tree"))}
    if not optimal_nodes:
        return res
    cal_prompts = [list(pair.tokenizer.encode(t)) for t in CALIBRATION_PROMPTS]
    probe, cal = calibrate(pair, cal_prompts, calibration_tokens or max_new_tokens, table_depth, table_ranks)
    table.events += probe.events
    table.at_risk += probe.at_risk
    accept = table.table()
    opt_rows = []
    for n, (tree, e) in optimal_tree_set(accept, optimal_nodes).items():
        row = _row(pair, prompts, tree, "optimal", repeats, max_new_tokens, delays_ms)
        row["predicted_tokens_per_round"] = round(e, 3)
        row["requested_nodes"] = n
        opt_rows.append(row)
    for r in rows:
        r["predicted_tokens_per_round"] = round(expected_tokens(spine(r["depth"], r["width"]), accept), 3)
    every = rows + opt_rows
    overall = {}
    for D in delays_ms:
        key = str(int(D))
        top = min(every, key=lambda x: x["ms_per_token"][key])
        chain_best = min((x for x in rows if x["kind"] == "chain"), key=lambda x: x["ms_per_token"][key])
        overall[key] = {"shape": {k: top[k] for k in ("kind", "depth", "width", "nodes")},
                        "ms_per_token": top["ms_per_token"][key],
                        "best_chain": {"length": chain_best["depth"], "ms_per_token": chain_best["ms_per_token"][key]},
                        "chain_over_best": round(chain_best["ms_per_token"][key] / top["ms_per_token"][key], 3)}
    cost = fit_cost(every)
    res["optimal"] = {"calibration": cal, "table": np.round(accept, 4).tolist(), "cost": cost.__dict__,
                      "rows": opt_rows, "ceiling": ceiling(accept, cost, delays_ms, ceiling_nodes)}
    res["best"] = _best(every, delays_ms, ("chain", "tree", "optimal"))
    res["best_overall"] = overall
    if online_rounds:
        res["online"] = {}
        for D in delays_ms:
            key = str(int(D))
            run, final = online(pair, prompts, D, online_rounds, max_new_tokens, table_depth)
            # the learner's final choice, measured as every other shape was
            run["final_measured"] = _row(pair, prompts, final, "learned", repeats, max_new_tokens, (D,))
            mine = run["final_measured"]["ms_per_token"][key]
            run["best_chain_over_final"] = round(overall[key]["best_chain"]["ms_per_token"] / mine, 3)
            run["final_over_best_measured"] = round(mine / overall[key]["ms_per_token"], 3)
            res["online"][key] = run
    return res
