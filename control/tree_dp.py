"""Sequoia's optimal-tree dynamic programme, vectorised: every size up to 128+ nodes in milliseconds.

`control.trees.optimal_trees` is the readable recursive form (pinned against brute force); an
online learner re-plans its trees from a changing acceptance table, and at 128 nodes the
recursive form takes about a second per call. This is the same recurrence with the knapsack
over the node budget done as one max-plus product per (depth, rank):
  F[d, m]    = 1 + G[d, 1, m-1]                       (a subtree rooted at depth d with m nodes)
  G[d, k, m] = max(0, max_{1<=j<=m} p_{d+1,k} F[d+1, j] + G[d, k+1, m-j])
so children take ranks 1, 2, ... with no gap, and a node at the table's last depth has none.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from control.trees import Tree, check_accept
from control.types import ControlError


def optimal_tree_set(accept: np.ndarray, sizes: Iterable[int]) -> dict[int, tuple[Tree, float]]:
    """{n: (the tree of at most n nodes with the largest expected tokens, that E)} for each n in
    `sizes`. The tree has fewer than n nodes only when the table's depth x rank cannot hold n."""
    a = check_accept(accept)
    sizes = sorted(set(int(n) for n in sizes))
    if not sizes or sizes[0] < 1:
        raise ControlError(f"optimal trees: sizes must be >= 1, got {sizes}")
    depth_max, width_max = a.shape
    m_max = sizes[-1] + 1  # the root counts as one node of its subtree
    # F[d, m] for d = 0..depth_max, m = 0..m_max (m = 0 unused, kept -inf so j >= 1)
    F = np.full((depth_max + 1, m_max + 1), -np.inf)
    F[depth_max, 1:] = 1.0
    choice = np.zeros((depth_max, width_max, m_max + 1), dtype=np.int64)  # nodes given to child k, 0 = none
    m = np.arange(m_max + 1)
    j = np.arange(m_max + 1)
    rest = m[:, None] - j[None, :]  # nodes left for ranks k+1.. when child k takes j
    valid = (j[None, :] >= 1) & (rest >= 0)
    rest_idx = np.clip(rest, 0, m_max)
    for d in range(depth_max - 1, -1, -1):
        G_next = np.zeros(m_max + 1)  # ranks past the table: no more children
        for k in range(width_max - 1, -1, -1):
            finite = np.isfinite(F[d + 1])  # 0 x -inf would be nan: price a missing subtree -inf directly
            child = np.where(finite, a[d, k] * np.where(finite, F[d + 1], 0.0), -np.inf)
            vals = np.where(valid, child[None, :] + G_next[rest_idx], -np.inf)
            best_j = np.argmax(vals, axis=1)
            best_v = vals[m, best_j]
            stop = ~(best_v > 1e-15)  # taking no child k is always allowed (value 0)
            choice[d, k] = np.where(stop, 0, best_j)
            G_next = np.where(stop, 0.0, best_v)
        F[d, 1:] = 1.0 + G_next[:-1]
    return {n: (_build(choice, n + 1), float(F[0, n + 1])) for n in sizes}


def _build(choice: np.ndarray, m: int) -> Tree:
    """The tree under a root at depth 0 with `m` nodes (root included), nodes numbered breadth
    first so parents come before children."""
    depth_max, width_max, _ = choice.shape
    parents: list[int] = []
    queue = [(-1, 0, m)]  # (node index, its depth, nodes of its subtree)
    while queue:
        node, d, size = queue.pop(0)
        if d >= depth_max:
            continue
        left, k = size - 1, 0
        while k < width_max and left > 0:
            j = int(choice[d, k, left])
            if j == 0:
                break
            parents.append(node)
            queue.append((len(parents) - 1, d + 1, j))
            left -= j
            k += 1
    return Tree(tuple(parents))
