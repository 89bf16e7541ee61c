"""Estimators over round frames: ms/token with a bootstrap interval, censored survival.

ms/token is always a ratio of sums (total round time / total tokens), as in
the theory. Rounds of one request are not independent (same prompt, same
context), so the bootstrap resamples requests, not rounds.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

Z95 = 1.959964


def ratio_ci(rounds: pl.DataFrame, num: str = "round_ms", den: str = "tokens", resamples: int = 400,
             seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(sum num / sum den, 2.5 %, 97.5 %) with requests resampled; (None,)*3 when there is nothing."""
    per = rounds.group_by("request_id").agg(pl.col(num).sum().alias("n"), pl.col(den).sum().alias("d"))
    n, d = per["n"].to_numpy().astype(float), per["d"].to_numpy().astype(float)
    if not len(d) or d.sum() <= 0:
        return None, None, None
    point = float(n.sum() / d.sum())
    if len(d) == 1:  # one request: its rounds are all we have
        n, d = rounds[num].to_numpy().astype(float), rounds[den].to_numpy().astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    ds = d[idx].sum(axis=1)
    ratios = n[idx].sum(axis=1)[ds > 0] / ds[ds > 0]
    if not len(ratios):
        return point, None, None
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return point, float(lo), float(hi)


def survival(lengths: np.ndarray, accepted: np.ndarray, max_length: int) -> dict:
    """Kaplan-Meier acceptance survival S(i) = P(first i drafts all accepted), i = 1..max_length.

    A round of length L with A accepted puts positions 1..min(A+1, L) at risk and accepts 1..A
    (later positions are censored: never drafted, or after the first rejection). Greenwood
    intervals; positions nobody reached are None."""
    L = np.asarray(lengths, int)
    A = np.asarray(accepted, int)
    keep = L > 0
    L, A = L[keep], A[keep]
    reached = np.minimum(A + 1, L)
    pos = np.arange(1, max_length + 1)[:, None]
    at_risk = (reached[None, :] >= pos).sum(axis=1).astype(float)
    acc = (A[None, :] >= pos).sum(axis=1).astype(float)
    s, var_sum, out, lo, hi = 1.0, 0.0, [], [], []
    for i in range(max_length):
        if at_risk[i] == 0:
            out.append(None), lo.append(None), hi.append(None)
            continue
        h = acc[i] / at_risk[i]
        s *= h
        rejected = at_risk[i] - acc[i]
        if acc[i] > 0:
            var_sum += rejected / (at_risk[i] * acc[i])
        half = Z95 * s * np.sqrt(var_sum)
        out.append(round(float(s), 4)), lo.append(round(float(max(0.0, s - half)), 4))
        hi.append(round(float(min(1.0, s + half)), 4))
    return {"survival": out, "ci_low": lo, "ci_high": hi, "at_risk": [int(x) for x in at_risk]}


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95 % normal interval)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan")
    return float(v.mean()), float(Z95 * v.std(ddof=1) / np.sqrt(len(v)))


def delay_buckets(delays: pl.Series, max_distinct: int = 12) -> pl.Expr:
    """Group key for the emulated one-way delay: the value itself (1 decimal) when a run used a
    few delays (const, markov, drift), else five quantile bins (jitter, traces)."""
    rounded = delays.round(1)
    if rounded.n_unique() <= max_distinct:
        return pl.col("delay_ms").round(1).alias("delay")
    edges = sorted(set(float(x) for x in np.quantile(delays.to_numpy(), [0.2, 0.4, 0.6, 0.8])))
    return right_closed_bins(pl.col("delay_ms"), edges).alias("delay")


def right_closed_bins(col: pl.Expr, edges: list[float]) -> pl.Expr:
    """Label each value with its bin "(lo, hi]" among ascending `edges` (null stays null), as polars'
    `cut` did (bounds in Python's float repr: "20.0" where `cut` wrote "20"). Built from `when` chains
    because `cut` is deprecated in polars 2 and its replacement (`bin_intervals`) is experimental and
    absent from the polars 1.x the project also supports."""
    bounds = [-math.inf, *edges, math.inf]
    labels = [f"({lo}, {hi}]" for lo, hi in zip(bounds, bounds[1:])]
    expr = pl.when(col.is_null()).then(pl.lit(None, pl.Utf8))
    for hi, label in zip(edges, labels):
        expr = expr.when(col <= hi).then(pl.lit(label))
    return expr.otherwise(pl.lit(labels[-1]))
