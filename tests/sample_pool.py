"""Counting seeded samples in two forked processes: the distribution tests draw thousands of independent
seeds, each its own random stream, so splitting the seeds between processes changes no count and halves
their time on two cores (CI's budget is 20 minutes). Fork, as PyTorch's DataLoader does, with one torch
thread per child: the function to sample (a closure, a monkeypatched model) is inherited, never pickled."""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable

# Under pytest-xdist the suite's own workers already fill the cores, and forking a worker (which runs
# execnet's I/O thread beside the test) risks a child inheriting a held lock: count in-process there.
WORKERS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
CELLS = 64
_sample: Callable[[int], tuple[int, ...]] | None = None  # set before the fork; each child inherits it


def _count(seeds: range) -> tuple[list[int], list[int]]:
    import torch

    torch.set_num_threads(1)
    counts, sums = [0] * CELLS, []
    for seed in seeds:
        cell, *extra = _sample(seed)
        counts[cell] += 1
        sums = [x + y for x, y in zip(sums, extra)] if sums else list(extra)
    return counts, sums


def count_cells(sample: Callable[[int], tuple[int, ...]], samples: int,
                workers: int = WORKERS) -> tuple[list[int], list[int]]:
    """(counts, sums): counts[c] is how many of seeds 0..samples-1 had `sample(seed)[0] == c`; sums adds up
    the rest of each returned tuple (per-sample statistics such as a fill count)."""
    global _sample
    _sample = sample
    try:
        chunks = [range(i, samples, workers) for i in range(workers)]
        if workers == 1:
            return _count(chunks[0])
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_count, chunks)
        counts = [sum(col) for col in zip(*(p[0] for p in parts))]
        sums = [sum(col) for col in zip(*(p[1] for p in parts if p[1]))]
        return counts, sums
    finally:
        _sample = None
