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


# --- R rounds in flight -------------------------------------------------------------------------
#
# A renewal argument. A run starts when the edge drafts a round on a verified context (after a
# rejection, or at the start): its first verdict comes back after draft + 2*one_way + verify. Each
# round is kept with probability kappa = S(L+1) (all L drafts accepted AND the verdict's next token
# equals the draft's own prediction at L+1, the keep rule of nodes/protocol/pipelining.py); while
# rounds are kept, verdicts follow one per period P = max(draft, verify, (2*one_way + verify)/R):
# the edge cannot draft faster than `draft`, the cloud cannot verify faster than `verify`, and only R
# rounds may be in flight over one round trip. The first round that is not kept ends the run: every
# rejection costs one whole round trip, because the edge cannot know the correction in advance. A run
# has 1/(1-kappa) rounds on average and each round emits B(L) = 1 + sum_{k<=L} S(k) tokens on average,
# so ms/token = ((1-kappa)(draft + 2*one_way + verify) + kappa*P) / B(L). R = 1 is the formula above
# with q_full = kappa; without drafting ahead P is the whole round (today's chain). Where the draft and
# the verify share one compute (both models in one process, as in the in-process bench: small models
# are bound by Python, which holds one interpreter lock) they do not overlap: P >= draft + verify.


def survival_from_alpha(alpha: float, length: int) -> np.ndarray:
    """S(k) = alpha**k for k = 0..length+1 (independent per-token acceptance)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} outside [0, 1]")
    return alpha ** np.arange(length + 2, dtype=float)


def _survival(survival: np.ndarray | None, alpha: float | None, length: int) -> np.ndarray:
    """S(0..length+1) from a measured table (S(k) = P(first k drafts accepted), S(0) = 1) or alpha."""
    if (survival is None) == (alpha is None):
        raise ValueError("give exactly one of survival (a measured table) or alpha")
    if alpha is not None:
        return survival_from_alpha(alpha, length)
    s = np.asarray(survival, dtype=float)
    if s.ndim != 1 or len(s) < length + 2:
        raise ValueError(f"survival has {s.size} entries; length {length} needs S(0..{length + 1})")
    if s[0] != 1.0 or np.any(np.diff(s) > 1e-12) or np.any(s < 0):
        raise ValueError("survival must start at 1 and be non-increasing and >= 0")
    return s[: length + 2]


def _verify_at(verify_ms: float | np.ndarray, length: int) -> float:
    """A scalar verify time, or a table indexed by draft length."""
    v = np.asarray(verify_ms, dtype=float)
    if v.ndim == 0:
        return float(v)
    if length >= len(v):
        raise ValueError(f"verify_ms table has {len(v)} entries; length {length} needs index {length}")
    return float(v[length])


def pipelined_ms_per_token(draft_ms_per_token: float, verify_ms: float | np.ndarray, one_way_ms: float,
                           length: int, rounds_in_flight: int, survival: np.ndarray | None = None,
                           alpha: float | None = None, draft_ahead: bool = True, overlap: bool = True) -> float:
    """Expected ms/token with `rounds_in_flight` rounds of `length` drafts in flight (see above).
    The draft of a round is `length` + 1 tokens when drafting ahead (the prediction at L+1 the next
    round is built on), `length` otherwise; draft_ahead=False with R=1 is today's single chain."""
    if length < 1:
        raise ValueError(f"length={length} must be >= 1")
    if rounds_in_flight < 1:
        raise ValueError(f"rounds_in_flight={rounds_in_flight} must be >= 1")
    if not draft_ahead and rounds_in_flight > 1:
        raise ValueError("rounds_in_flight > 1 needs draft_ahead: the next round is built on a prediction")
    if min(draft_ms_per_token, one_way_ms) < 0:
        raise ValueError("times must be >= 0")
    s = _survival(survival, alpha, length)
    verify = _verify_at(verify_ms, length)
    b = 1.0 + float(np.sum(s[1: length + 1]))
    if not draft_ahead:
        return (length * draft_ms_per_token + 2.0 * one_way_ms + verify) / b
    draft = (length + 1) * draft_ms_per_token
    kappa = float(s[length + 1])
    compute = max(draft, verify) if overlap else draft + verify
    period = max(compute, (2.0 * one_way_ms + verify) / rounds_in_flight)
    return ((1.0 - kappa) * (draft + 2.0 * one_way_ms + verify) + kappa * period) / b


def best_pipeline(draft_ms_per_token: float, verify_ms: float | np.ndarray, one_way_ms: float,
                  survival: np.ndarray | None = None, alpha: float | None = None, max_length: int = 16,
                  max_rounds: int = 8, overlap: bool = True) -> tuple[int, int, bool, float]:
    """(L, R, draft ahead, ms/token) minimising the model at this delay over the plain chain
    (R = 1, no drafting ahead) and drafting ahead with R = 1..max_rounds, L = 1..max_length. Ties go
    to the plain chain, then the smaller R, then the smaller L: drafts ahead that do not pay are
    wasted edge work."""
    if survival is not None and len(survival) < max_length + 2:
        max_length = len(survival) - 2
    if max_length < 1 or max_rounds < 1:
        raise ValueError(f"max_length={max_length} and max_rounds={max_rounds} must be >= 1")
    best: tuple[int, int, bool, float] = (0, 0, False, np.inf)
    shapes = [(1, False)] + [(r, True) for r in range(1, max_rounds + 1)]
    for r, ahead in shapes:
        for length in range(1, max_length + 1):
            j = pipelined_ms_per_token(draft_ms_per_token, verify_ms, one_way_ms, length, r, survival, alpha,
                                       ahead, overlap)
            if j < best[3] - 1e-12:
                best = (length, r, ahead, j)
    return best[0], best[1], best[2], float(best[3])


def critical_delay_for_rounds(draft_ms_per_token: float, verify_ms: float, length: int) -> float:
    """One-way delay above which a second round in flight shortens the period: 2d + verify must
    exceed the round's draft time (the edge's own pace), else R = 1 already keeps the edge busy."""
    return max(0.0, ((length + 1) * draft_ms_per_token - verify_ms) / 2.0)
