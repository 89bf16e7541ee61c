"""Draft trees in `experiment compare`: `tree:auto` (the edge's online shape learner, no profile)
and fixed spines, on the same prompts and seeds as the chain policies, at the same delays.

A tree shape is an edge's setting (`--tree`), not a request's, so every shape runs on edges of
its own (one per delay) and its rounds are labelled `tree:SHAPE` here. The references come from
the run itself: the best fixed tree in hindsight (the fixed spine of least measured ms/token at
that delay: the oracle a learner of shapes is measured against, as the best fixed length is for
chains) and the best chain (least ms/token over every chain policy and fixed length run at that
delay). `tree:auto` gets a paired gap to both; every tree row its ratio best chain / itself.
"""
from __future__ import annotations

from dataclasses import replace

import polars as pl

from pipeline.analysis.stats import delay_buckets, ratio_ci
from pipeline.experiments.lab import Cell, Lab, LabConfig, logged, slug
from pipeline.experiments.refusals import Refusal, emulation_overruns, transport_overhead

TREE_PREFIX = "tree:"
AUTO_TREE = "tree:auto"
# depth <= the lab's max length (8): a small tree that pays near 0 ms, a medium one, and the
# best fixed shape of `bench trees` at 50 ms
COMPARE_TREES = ("auto", "2x2", "4x2", "8x3")
# Requests in flight in a tree lab: the edge drafts each tree request on its own cache, one request
# per forward (no batching across requests as for chains), so compare's 40 at once left a median
# 50 ms per round waiting for this machine's 2 cores, outside the emulated devices. Each request is
# a virtual device of its own, so fewer at once changes the wall time, not the emulated times.
TREE_CONCURRENCY = 8


def tree_edges(delays, shapes) -> dict[str, tuple[float, str]]:
    """edge id -> (one-way delay, shape) for every delay and shape."""
    return {f"edge-d{d:g}-tree-{slug(s)}": (float(d), s) for d in delays for s in shapes}


async def run_trees(cfg: LabConfig, delays, shapes, prompts: list[str], n: int, progress=None
                    ) -> tuple[pl.DataFrame, list[Refusal]]:
    """Every shape at every delay, a lab per delay (its edges, one per shape, share a verifier):
    the rounds, each labelled with its shape as `policy`, and what the machine did that the
    numbers cannot carry (rounds computed slower than the emulated devices)."""
    frames, refused = [], []
    cfg = replace(cfg, concurrency=min(cfg.concurrency, TREE_CONCURRENCY))
    for d in delays:
        edges = {e: s for e, (dd, s) in tree_edges([d], shapes).items()}
        with Lab(cfg, f"compare-trees-d{d:g}", {e: f"const:{d:g}" for e in edges},
                 edge_flags={e: ["--tree", s] for e, s in edges.items()}) as lab:
            cells = [Cell(e, "auto", n, tag=f"tree-{s}") for e, s in edges.items()]
            results = await lab.run(cells, prompts, progress)
            rounds = await logged(lab.run_dir, results)
            checks = (emulation_overruns(rounds, lab.emulation()), transport_overhead(rounds))
        refused += [Refusal(x.check, f"trees at {d:g} ms: {x.why}") for x in checks if x is not None]
        frames.append(label_trees(rounds, edges))
    return (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()), refused


def label_trees(rounds: pl.DataFrame, edges: dict[str, str]) -> pl.DataFrame:
    """`policy` := tree:SHAPE of the edge that played the round (the request named a chain policy
    the tree edge does not act on)."""
    return rounds.with_columns(pl.col("edge_id").replace_strict(
        {e: TREE_PREFIX + s for e, s in edges.items()}, default=None).alias("policy")).filter(
        pl.col("policy").is_not_null())


def tree_rows(chains: pl.DataFrame, trees: pl.DataFrame, chain_policies: list[str]) -> list[dict]:
    """Per delay: every tree shape's ms/token with its interval, nodes and depth played, and its
    ratio to the best chain; the best fixed tree in hindsight named; tree:auto's paired gaps to it
    and to the best chain."""
    from pipeline.experiments.compare import paired_gap

    if trees.is_empty():
        return []
    both = pl.concat([chains.filter(pl.col("policy").is_in(chain_policies)), trees], how="diagonal_relaxed")
    keyed = both.with_columns(delay_buckets(both["delay_ms"].fill_null(0.0)))
    rows = []
    for (delay,), g in keyed.group_by(["delay"], maintain_order=True):
        scored = {}
        for p in g["policy"].unique().to_list():
            j, lo, hi = ratio_ci(g.filter(pl.col("policy") == p))
            if j is not None:
                scored[p] = (j, lo, hi)
        chain_scores = {p: v[0] for p, v in scored.items() if not p.startswith(TREE_PREFIX)}
        fixed_trees = {p: v[0] for p, v in scored.items() if p.startswith(TREE_PREFIX) and p != AUTO_TREE}
        best_chain = min(chain_scores, key=chain_scores.get) if chain_scores else None
        best_tree = min(fixed_trees, key=fixed_trees.get) if fixed_trees else None
        for p in sorted(p for p in scored if p.startswith(TREE_PREFIX)):
            sub = g.filter(pl.col("policy") == p)
            j, lo, hi = scored[p]
            row = {"delay": str(delay), "policy": p, "rounds": sub.height, "ms_per_token": _r(j),
                   "ci": [_r(lo), _r(hi)],
                   "mean_nodes": _r(sub["draft_length"].mean()),
                   "mean_depth": _r(sub["tree_depth"].mean()) if "tree_depth" in sub.columns else None,
                   "best_chain": best_chain, "best_chain_ms_per_token": _r(chain_scores.get(best_chain)),
                   "best_chain_over_this": _r(chain_scores[best_chain] / j, 3) if best_chain else None}
            if p == best_tree:
                row["reference"] = "best_fixed_tree"
            if p == AUTO_TREE:
                if best_tree is not None:
                    row["best_fixed_tree"] = best_tree
                    row["vs_best_fixed_tree"] = paired_gap(sub, g.filter(pl.col("policy") == best_tree))
                if best_chain is not None:
                    row["vs_best_chain"] = paired_gap(sub, g.filter(pl.col("policy") == best_chain))
            rows.append(row)
    return rows


def _r(x, digits: int = 2):
    return None if x is None else round(float(x), digits)
