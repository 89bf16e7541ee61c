"""The prefill token budget per batch, measured on the device at startup.

Why: chunked prefill bounds how long a new long prompt stalls the other sessions' rounds, but the right
chunk depends on the device. On a CPU a forward's cost grows with its tokens, so 256-token chunks (the
CPU default) cut the stall. On a GPU a forward of a few hundred tokens costs about what one of a
thousand does (launch-bound, then bandwidth-bound), so small chunks only multiply the delay: on an H200
with a 7B target, 256-token chunks made a 3,000-token prompt ready after 1.7 s instead of 0.45 s with
1024-token ones, and stalled the others longer (docs/gpu.md). So: time one forward per size and take
the largest size whose forward costs at most `budget_ms`, or twice the smallest size's (a chunk up to
the knee of the curve is free).
"""
from __future__ import annotations

import statistics
import time

import torch

CPU_CHUNK = 256
SIZES = (256, 512, 1024, 2048, 4096, 8192)


def _forward_ms(model, tokens: int, reps: int = 3) -> float:
    p = next(model.parameters())
    x = torch.randint(0, 200, (1, tokens), device=p.device)
    cuda = p.device.type == "cuda"
    ts = []
    with torch.inference_mode():
        for i in range(reps + 1):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=x, use_cache=False, logits_to_keep=1)
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first is a warm-up
                ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def choose_chunk(sizes: tuple[int, ...], cost_ms, budget_ms: float) -> tuple[int, dict[str, float], float]:
    """The largest size whose cost is within max(budget_ms, twice the smallest size's cost); stops timing at the
    first size past it. (chunk, {size: ms} timed, the limit)."""
    ms: dict[str, float] = {}
    chunk, limit = sizes[0], None
    for n in sizes:
        t = cost_ms(n)
        ms[str(n)] = round(t, 2)
        limit = limit if limit is not None else max(budget_ms, 2 * t)
        if t > limit:
            break
        chunk = n
    return chunk, ms, limit or 0.0


def measure_prefill(model, budget_ms: float = 50.0, sizes: tuple[int, ...] = SIZES) -> dict:
    """{"chunk": tokens per batch, "ms": {size: forward ms}, ...}; on a CPU the CPU default, unmeasured (its
    cost is linear in tokens: the chunk only sets how long one stall lasts)."""
    p = next(model.parameters())
    if p.device.type != "cuda":
        return {"chunk": CPU_CHUNK, "ms": {}, "budget_ms": budget_ms, "measured": False}
    chunk, ms, limit = choose_chunk(sizes, lambda n: _forward_ms(model, n), budget_ms)
    return {"chunk": chunk, "ms": ms, "budget_ms": budget_ms, "limit_ms": round(limit, 2), "measured": True}
