"""`specstop calibrate RUN_DIR -o profile.json`: the control profile of a live system, from its logs.

Round compute C(L) is what a round of drafted length L costs besides the
emulated link: round_ms - link_ms (draft, verify, queues and the transport),
so theory, oracle and simulator apply to the system that ran. It does not
depend on the delay, so rounds at every delay and of every policy count. The
acceptance survival S(i) is the Kaplan-Meier estimate over all drafted rounds
(a round of length L reveals positions 1..min(A+1, L) only). Lengths nobody
played get C from a count-weighted affine fit of the ones played; positions
nobody reached continue the pooled hazard of positions >= 2; both are listed
under `extrapolated`. Target-only rounds (length 0) are left out.
`tokens_per_round` is B(L) as measured in each played length's own rounds: the
survival's B(L) assumes rounds independent of each other, which real text is
not (see control/theory.py), and the fixed-length theory can take it instead.

A fit says when it is weak, in `warnings` (one line each, printed by the
command) and in fields: `too_few_rounds` lists the played lengths with fewer
than `min_rounds_per_length` rounds (a mean of a handful of rounds on a busy
machine is noise), and `compute_monotone` is false, with `compute_drops`, where
C(L) falls as L grows (a longer draft never costs less: the fit is noise there,
and the theory would take it as it is).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.analysis.frames import load_run
from pipeline.analysis.stats import mean_ci, survival
from pipeline.errors import PipelineError


MIN_ROUNDS_PER_LENGTH = 30  # fewer rounds of a length: its mean compute is too noisy to trust (warned, still fitted)


def calibrate_rounds(rounds: pl.DataFrame, max_length: int | None = None, name: str = "calibrated",
                     min_rounds: int = MIN_ROUNDS_PER_LENGTH) -> dict:
    drafted = rounds.filter(pl.col("draft_length") > 0).with_columns(
        (pl.col("round_ms") - pl.col("link_ms").fill_null(0.0)).alias("compute_ms"))
    if drafted.is_empty():
        raise PipelineError("calibrate: no drafted rounds in the logs (only target-only or none)")
    k = int(max_length or drafted["draft_length"].max())
    lengths = drafted["draft_length"].to_numpy()
    compute = drafted["compute_ms"].to_numpy()
    tokens = drafted["tokens"].to_numpy()
    means, cis, counts, per_round = np.full(k, np.nan), {}, {}, {}
    for L in range(1, k + 1):
        sel = compute[lengths == L]
        counts[str(L)] = int(len(sel))
        if len(sel):
            per_round[str(L)] = round(float(tokens[lengths == L].mean()), 4)
            m, half = mean_ci(sel)
            means[L - 1] = m
            cis[str(L)] = [round(m - half, 3), round(m + half, 3)] if np.isfinite(half) else None
    seen = ~np.isnan(means)
    missing = [int(L) for L in np.flatnonzero(~seen) + 1]
    if missing:
        means = _affine_fill(means, np.array([counts[str(L)] for L in range(1, k + 1)], float))
    km = survival(lengths, drafted["accepted"].to_numpy(), k)
    surv, unreached = _extend(km["survival"], km["at_risk"], drafted)
    thin = [L for L in range(1, k + 1) if 0 < counts[str(L)] < min_rounds]
    drops = [{"from": L, "to": L + 1, "ms": [round(float(means[L - 1]), 3), round(float(means[L]), 3)]}
             for L in range(1, k) if means[L] < means[L - 1]]
    return {
        "name": name,
        "round_compute_ms": {str(L): round(float(means[L - 1]), 3) for L in range(1, k + 1)},
        "survival": [round(float(x), 4) for x in surv],
        "round_compute_ci_ms": cis,
        "survival_ci": [[lo, hi] for lo, hi in zip(km["ci_low"], km["ci_high"])],
        "rounds_per_length": counts,
        "tokens_per_round": per_round,
        "at_risk_per_position": km["at_risk"],
        "extrapolated": {"lengths": missing, "positions": unreached},
        "rounds": int(len(drafted)),
        "emulated": bool(drafted["emulated"].fill_null(False).any()),
        "min_rounds_per_length": int(min_rounds),
        "too_few_rounds": thin,
        "compute_monotone": not drops,
        "compute_drops": drops,
        "warnings": _warnings(thin, counts, drops, min_rounds),
    }


def _warnings(thin: list[int], counts: dict, drops: list[dict], min_rounds: int) -> list[str]:
    """One line for people per weakness of the fit."""
    out = []
    if thin:
        out.append(f"C(L) of length{'s' if len(thin) > 1 else ''} {', '.join(map(str, thin))} rests on fewer than "
                   f"{min_rounds} rounds ({', '.join(f'L={L}: {counts[str(L)]}' for L in thin)}): "
                   "a noisy mean; calibrate from a longer run")
    if drops:
        out.append("C(L) is not monotone: it falls " + ", ".join(
            f"from L={d['from']} ({d['ms'][0]:.2f} ms) to L={d['to']} ({d['ms'][1]:.2f} ms)" for d in drops)
            + "; a longer draft never costs less, so this is noise (too few rounds, or a busy machine)")
    return out


def _affine_fill(means: np.ndarray, counts: np.ndarray) -> np.ndarray:
    L = np.arange(1, len(means) + 1, dtype=float)
    seen = ~np.isnan(means)
    slope, icept = 0.0, float(np.average(means[seen], weights=np.maximum(counts[seen], 1)))
    if seen.sum() >= 2:
        fit_slope, fit_icept = np.polyfit(L[seen], means[seen], 1, w=np.sqrt(counts[seen]))
        if fit_slope > 0:  # compute grows with the length; a falling fit is noise, keep the mean
            slope, icept = float(fit_slope), float(fit_icept)
    return np.where(seen, means, np.maximum(icept + slope * L, 1e-3))


def _extend(surv: list, at_risk: list[int], drafted: pl.DataFrame) -> tuple[np.ndarray, list[int]]:
    """Positions nobody reached continue the pooled hazard of the reached positions >= 2."""
    reached = [i for i, s in enumerate(surv) if s is not None]
    unreached = [i + 1 for i, s in enumerate(surv) if s is None]
    if not reached:
        raise PipelineError("calibrate: no drafted position was ever reached")
    out = np.array([s if s is not None else np.nan for s in surv], float)
    if unreached:
        later = [i for i in reached if i >= 1]
        if later:
            h = float(np.prod([out[i] / out[i - 1] for i in later if out[i - 1] > 0]) ** (1 / len(later)))
        else:
            h = out[reached[0]]
        last = reached[-1]
        for i in range(last + 1, len(out)):
            out[i] = out[i - 1] * h
    return out, unreached


def calibrate(run_dir: str | Path, out: str | Path | None = None, max_length: int | None = None) -> dict:
    frames = load_run(run_dir)
    profile = calibrate_rounds(frames.rounds, max_length, name=f"calibrated:{Path(run_dir).name}")
    profile["source"] = str(run_dir)
    profile["bad_lines"] = frames.bad_lines
    if out:
        Path(out).write_text(json.dumps(profile, indent=1) + "\n")
    return profile
