"""Renewal-reward theory of the draft length (DESIGN.md section 2).

A round of length L costs T(L) = C(L) + 2d and yields B(L) = 1 + sum_{i<=L} S(i)
tokens on average, so the long-run ms/token of fixed L is J(L, d) = T(L)/B(L).

B(L) from the survival assumes rounds independent of each other. On real text
acceptance runs in stretches (a round that starts right after a rejection
starts in a hard stretch, and long lengths end in rejections more often), so
where every length was measured on its own, `tokens` = B(L) as measured can be
passed instead; the fixed-length results then need no independence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from control.profile import Profile
from control.types import ControlError


def expected_tokens(survival: np.ndarray) -> np.ndarray:
    """B(L) for L = 1..K: 1 + cumulative survival."""
    return 1.0 + np.cumsum(np.asarray(survival, dtype=float))


def _tokens(profile: Profile, tokens: np.ndarray | None) -> np.ndarray:
    if tokens is None:
        return expected_tokens(profile.survival)
    b = np.asarray(tokens, dtype=float)
    if b.shape != profile.compute_ms.shape:
        raise ControlError(f"tokens per round: {b.shape[0] if b.ndim else 0} lengths for a profile of {profile.max_length}")
    return b


def ms_per_token(profile: Profile, delay_ms: float, tokens: np.ndarray | None = None) -> np.ndarray:
    """J(L, d) for L = 1..K (B(L) = `tokens` where given, else from the survival)."""
    return (profile.compute_ms + 2.0 * delay_ms) / _tokens(profile, tokens)


def best_length(profile: Profile, delay_ms: float, tokens: np.ndarray | None = None) -> tuple[int, float]:
    """argmin_L J(L, d) (smallest L on ties) and the minimum."""
    j = ms_per_token(profile, delay_ms, tokens)
    i = int(np.argmin(j))
    return i + 1, float(j[i])


def critical_delay(profile: Profile, tokens: np.ndarray | None = None) -> float:
    """Smallest one-way delay at which some L >= 2 beats L = 1 (inf if none ever does).

    d_c = min_{L>=2} max(0, (C(L) B(1) - C(1) B(L)) / (2 (B(L) - B(1)))).
    """
    b = _tokens(profile, tokens)
    c = profile.compute_ms
    best = np.inf
    for i in range(1, len(c)):
        gain = b[i] - b[0]
        if gain <= 0:
            continue
        best = min(best, max(0.0, (c[i] * b[0] - c[0] * b[i]) / (2.0 * gain)))
    return float(best)


def geometric_expected_tokens(alpha: float, length: int) -> float:
    """Closed form of B(L) for S(i) = alpha**i."""
    if alpha == 1.0:
        return float(length + 1)
    return (1.0 - alpha ** (length + 1)) / (1.0 - alpha)


def affine_fit(compute_ms: np.ndarray) -> tuple[float, float]:
    """Least-squares C(L) ~ a L + b0 over L = 1..K: (a, b0)."""
    L = np.arange(1, len(compute_ms) + 1, dtype=float)
    if len(L) == 1:
        return 0.0, float(compute_ms[0])
    a, b0 = np.polyfit(L, compute_ms, 1)
    return float(a), float(b0)


def threshold_length(profile: Profile, delay_ms: float, slope_ms: float | None = None) -> int:
    """L* = min{L : J(L, d) <= a / S(L+1)} (average cost <= marginal cost), affine C."""
    a = affine_fit(profile.compute_ms)[0] if slope_ms is None else slope_ms
    j = ms_per_token(profile, delay_ms)
    s_next = np.append(profile.survival[1:], 0.0)
    for i in range(len(j)):
        if s_next[i] <= 0 or j[i] * s_next[i] <= a:
            return i + 1
    return len(j)


def dinkelbach_stop(survival: np.ndarray, lam: float, slope_ms: float, max_length: int | None = None) -> int:
    """Stop drafting at the first n with lam * S(n+1) <= a (n >= 1)."""
    k = len(survival) if max_length is None else min(max_length, len(survival))
    for n in range(1, k):
        if lam * survival[n] <= slope_ms:
            return n
    return k


def rejection_threshold(profile: Profile, delay_ms: float) -> float:
    """h(d) = 1 - a / lambda*(d): stop once P(some drafted token is rejected) >= h(d)."""
    a = affine_fit(profile.compute_ms)[0]
    lam = best_length(profile, delay_ms)[1]
    return float(max(0.0, 1.0 - a / lam)) if lam > 0 else 0.0


@dataclass(frozen=True)
class TheoryRow:
    delay_ms: float
    best_length: int
    ms_per_token: float


def theory_table(profile: Profile, delays_ms: list[float]) -> dict:
    rows = [TheoryRow(float(d), *best_length(profile, d)) for d in delays_ms]
    return {
        "profile": profile.name,
        "critical_delay_ms": critical_delay(profile),
        "rows": [r.__dict__ for r in rows],
    }
