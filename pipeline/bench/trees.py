"""`specstop bench trees`: chain vs draft trees on a model pair, in one process.

Per shape (depth x width spine of control.trees; width 1 = the chain) it runs tree_generate
greedily on a few prompts, `repeats` times, and reports medians of: tokens per target forward,
draft and verify ms per round, and ms/token modelled at each one-way delay as
(draft + verify + 2 delay) / tokens per round. The delay is modelled, not slept, so the table
shows where a tree's extra compute is paid back by fewer round trips.
"""
from __future__ import annotations

import statistics

import torch

from control.trees import spine
from nodes.models.loading import load_pair
from nodes.models.tree_verify import tree_generate

PROMPTS = ["The cat sat on", "Once upon a time", "def add(a, b):"]


def _run(pair, prompts: list[list[int]], shape, max_new: int) -> tuple[float, float, float]:
    """(tokens per round, draft ms per round, verify ms per round) over all prompts."""
    tokens = rounds = 0
    draft = verify = 0.0
    for prompt in prompts:
        g = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, max_new, shape)
        tokens += sum(len(r.emitted) for r in g.rounds)
        rounds += len(g.rounds)
        draft += sum(r.draft_ms for r in g.rounds)
        verify += sum(r.verify_ms for r in g.rounds)
    return tokens / rounds, draft / rounds, verify / rounds


def bench_trees(draft: str | None = None, target: str | None = None, threads: int = 2, repeats: int = 3,
                max_new_tokens: int = 32, depths: range = range(1, 9), widths: range = range(1, 4),
                delays_ms: tuple[float, ...] = (0.0, 50.0), device: str = "cpu", dtype: str | None = None) -> dict:
    torch.set_num_threads(threads)
    pair = load_pair(draft, target, device=device, dtype=dtype)
    prompts = [list(pair.tokenizer.encode(t)) for t in PROMPTS]
    _run(pair, prompts, spine(2, 2), 8)  # warm-up: first forwards pay one-off allocation
    rows = []
    for d in depths:
        for w in widths:
            shape = spine(d, w)
            runs = [_run(pair, prompts, shape, max_new_tokens) for _ in range(repeats)]
            tpr = statistics.median(r[0] for r in runs)
            dms = statistics.median(r[1] for r in runs)
            vms = statistics.median(r[2] for r in runs)
            rows.append({"depth": d, "width": w, "nodes": shape.nodes, "kind": "chain" if w == 1 else "tree",
                         "tokens_per_target_forward": round(tpr, 3), "draft_ms_per_round": round(dms, 2),
                         "verify_ms_per_round": round(vms, 2),
                         "ms_per_token": {str(int(D)): round((dms + vms + 2 * D) / tpr, 2) for D in delays_ms}})
    best = {}
    for D in delays_ms:
        key = str(int(D))
        for kind in ("chain", "tree"):
            r = min((x for x in rows if x["kind"] == kind), key=lambda x: x["ms_per_token"][key], default=None)
            if r is not None:
                best[f"{kind}@{key}ms"] = {"depth": r["depth"], "width": r["width"],
                                          "ms_per_token": r["ms_per_token"][key]}
    return {"pair": [pair.draft_name, pair.target_name], "repeats": repeats, "max_new_tokens": max_new_tokens,
            "prompts": len(PROMPTS), "shape_family": "spine: depth levels of width candidates, rank 1 extended",
            "rows": rows, "best": best}
