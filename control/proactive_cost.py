"""Cost model of proactive drafting (numpy only): when does drafting ahead pay?

One round costs draft + 2*one_way + verify. With probability q (all L accepted and the verdict's
next token equals the draft's prediction) the next draft was made while the round was in flight,
so up to min(draft, 2*one_way + verify) leaves the critical path. With one round in flight the gain
is bounded by draft / round time.
"""
from __future__ import annotations

import numpy as np


def ms_per_token(draft_ms: float, verify_ms: float, one_way_ms: float,
                 tokens_per_round: float, q_full: float, proactive: bool) -> float:
    """Expected ms per emitted token; proactive=False is today's single-chain model."""
    if tokens_per_round <= 0:
        raise ValueError(f"tokens_per_round={tokens_per_round} must be > 0")
    if not 0.0 <= q_full <= 1.0:
        raise ValueError(f"q_full={q_full} outside [0, 1]")
    round_ms = draft_ms + 2.0 * one_way_ms + verify_ms
    saved = q_full * float(np.minimum(draft_ms, 2.0 * one_way_ms + verify_ms)) if proactive else 0.0
    return (round_ms - saved) / tokens_per_round
