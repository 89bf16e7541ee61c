"""The strongest references a run can give itself: the best fixed length and the best per-token
stop threshold in hindsight, both from the run's own rounds at one delay.

Best fixed length: the `fixed:L` cell with the lowest ms/token (sum of round times / sum of tokens).

Best per-token threshold: a probe policy (`PROBE`, SpecDec++ with threshold 1: it drafts the maximum
K every round and never stops, while its stop rule records the acceptance head's p̂ after each
drafted token, `stop_scores` in the round's log line) gives, per round, the head's scores and the
verified accepted count A of the whole draft. A threshold rule h (stop after token n once
1 - prod_{i<=n} p̂_i > h) would have drafted n_h <= K tokens of that same draft and kept min(A, n_h)
of them plus the target's token; its round costs what the run's `fixed:n_h` rounds that drafted n_h
tokens cost at the same delay, a request's first round apart from the others (their mean round times:
a cell also holds budget-cut rounds, shorter and cheaper, and target-only last rounds where the budget
left one token, and its first rounds carry the prefill; charging n_h-token rounds the whole cell's mean
made the reference 6-10 % too fast for 5-8 tokens at 50 ms). Only drafted rounds are replayed, and a
policy is compared with the replay on its drafted rounds (compare.policy_rows): how many target-only
last rounds a policy's requests end with depends on its own trajectory, which a replay cannot follow. Its ms/token is sum T(n_h) / sum tokens, minimised over a
grid of h. Rounds are replayed one by one (a shorter round would have changed the next round's
context): the usual offline evaluation of a stop rule, and why the reference is called "in hindsight".
"""
from __future__ import annotations

import numpy as np
import polars as pl

PROBE = "specdec++:1"
THRESHOLDS = tuple(round(float(h), 3) for h in np.linspace(0.0, 0.98, 50))


def ratio(df: pl.DataFrame) -> float | None:
    n = df["tokens"].sum() if df.height else 0
    return float(df["round_ms"].sum()) / float(n) if n else None


def best_fixed(rounds: pl.DataFrame, lengths) -> tuple[str | None, float | None]:
    """(policy, ms/token) of the best `fixed:L` in `rounds` (one delay's), or (None, None)."""
    scored = [(j, f"fixed:{L}") for L in lengths
              if (j := ratio(rounds.filter(pl.col("policy") == f"fixed:{L}"))) is not None]
    if not scored:
        return None, None
    j, p = min(scored)
    return p, j


def round_costs(rounds: pl.DataFrame, lengths) -> dict[tuple[int, bool], float]:
    """(L, first) -> mean round time of the `fixed:L` rounds that drafted exactly L tokens (one delay's
    rounds), a request's first round (first: its prefill) apart from its later ones."""
    out = {}
    for L in lengths:
        g = rounds.filter((pl.col("policy") == f"fixed:{L}") & (pl.col("draft_length") == L))
        for first in (True, False):
            part = g.filter((pl.col("round") == 0) == first)
            if part.height:
                out[(L, first)] = float(part["round_ms"].mean())
    return out


def stop_length(scores, k: int, h: float) -> int:
    """Tokens a SpecDec++ rule with threshold h drafts of a K-token draft whose head scores are `scores`."""
    alive = 1.0
    for n, p in enumerate(scores[: k - 1], start=1):
        alive *= min(1.0, max(0.0, p))
        if 1.0 - alive > h:
            return n
    return k


def replay(probe: pl.DataFrame, round_ms: dict[tuple[int, bool], float], h: float) -> pl.DataFrame | None:
    """The probe's rounds as threshold h would have played them: (request_id, round_ms, tokens); None when
    some round would have drafted a length the run has no cost for (dropping those rounds would bias it)."""
    ids, times, tokens = [], [], []
    for rid, r, k, a, kept, scores in probe.select("request_id", "round", "draft_length", "accepted", "tokens",
                                                   "stop_scores").iter_rows():
        n = stop_length(scores or [], k, h)
        if (n, r == 0) not in round_ms:
            return None
        ids.append(rid)
        times.append(round_ms[(n, r == 0)])
        tokens.append(min(min(a, n) + 1, kept))  # a round cut by EOS or the budget keeps its cut
    return pl.DataFrame({"request_id": ids, "round_ms": times, "tokens": tokens},
                        schema={"request_id": pl.Utf8, "round_ms": pl.Float64, "tokens": pl.Int64})


def best_threshold(rounds: pl.DataFrame, lengths, thresholds=THRESHOLDS) -> dict | None:
    """The best threshold in hindsight at one delay: {threshold, ms_per_token, rounds, frame (the replayed
    rounds, for paired comparisons)}, or None without probe rounds carrying scores or without the fixed
    lengths' costs."""
    probe = rounds.filter((pl.col("policy") == PROBE) & (pl.col("draft_length") > 0))
    if probe.is_empty() or probe["stop_scores"].null_count() == probe.height:
        return None
    round_ms = round_costs(rounds, lengths)
    if not round_ms:
        return None
    best = None
    for h in thresholds:
        frame = replay(probe, round_ms, h)
        j = None if frame is None else ratio(frame)
        if j is not None and (best is None or j < best["ms_per_token"]):
            best = {"threshold": h, "ms_per_token": j, "rounds": frame.height, "frame": frame}
    return best
