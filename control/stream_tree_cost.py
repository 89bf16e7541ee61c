"""When the continuous speculation tree pays over a chain (numpy-free, pure arithmetic).

Under the stream tree every token is decided at a node whose children are the draft's top tokens
there, a set fixed by the draft alone; so the misses per token (the target's token outside that
set) do not depend on the delay, and each miss costs one whole round trip (the edge learns it a
one-way delay late and its new tree arrives a one-way delay later). Between misses the tokens come
as fast as the edge deepens the tree along the true path and the cloud verifies it: a compute cost
per token that a run at zero delay measures (both models, the tree expansions and the verify, on
their real compute). So

    ms/token(d) = compute_ms_per_token + (misses_per_token + 1/new_tokens) * 2 * d

(the 1/new_tokens: the first token waits a round trip too). At d ~ 0 the compute term is all there
is, and there the tree's extra draft work makes it lose to a chain; the rule below picks it only
where its modelled cost is below the chain's.
"""
from __future__ import annotations


def stream_tree_ms_per_token(compute_ms_per_token: float, misses_per_token: float, one_way_ms: float,
                             new_tokens: int) -> float:
    """Modelled ms per token of the stream tree at one-way delay `one_way_ms`."""
    if compute_ms_per_token < 0 or misses_per_token < 0 or one_way_ms < 0 or new_tokens < 1:
        raise ValueError(f"stream tree cost: need compute >= 0, misses >= 0, delay >= 0, new_tokens >= 1; got "
                         f"{compute_ms_per_token}, {misses_per_token}, {one_way_ms}, {new_tokens}")
    return compute_ms_per_token + (misses_per_token + 1.0 / new_tokens) * 2.0 * one_way_ms


def prefer_stream_tree(chain_ms_per_token: float, compute_ms_per_token: float, misses_per_token: float,
                       one_way_ms: float, new_tokens: int) -> tuple[bool, float]:
    """(use the stream tree, its modelled ms/token) against a chain's modelled ms/token; ties go to
    the chain (the simpler protocol)."""
    ms = stream_tree_ms_per_token(compute_ms_per_token, misses_per_token, one_way_ms, new_tokens)
    return ms < chain_ms_per_token, ms
