"""`specstop experiment phase`: fixed draft lengths over a delay grid, measured live.

The question of the seed paper: where is the critical delay below which one
drafted token per round is best, and how does the best length grow with the
delay? A calibration run (every length at zero delay, on the grid's own
prompts, each twice) gives the profile and what each fixed:L policy pays and
yields per round; the theory then predicts the best length per delay and the
critical delay. The grid (every length at every
delay, paired prompts) measures them: ms/token per cell with a bootstrap
interval, the best length per delay, and the critical delay where the measured
ms/token lines of L >= 2 cross the line of L = 1 (ms/token is linear in the
delay for a fixed length).

Why paired prompts and measured tokens per round: on the bundled pair the
lines of L = 1, 2, 3 are nearly parallel near the critical delay, so a 1 %
error in tokens per round moves it by a quarter. Calibration prompts of their
own differ from the grid's by more than that (first-token acceptance 0.82 vs
0.90 in one run), and the survival's B(L) assumes independent rounds while
acceptance on text runs in stretches (L = 1 rounds accept 0.92, the pooled
estimate says 0.90). So the prediction takes C(L) and B(L) as the calibration
measured them for each fixed:L policy (its last round, cut short by the token
budget, included, as in the grid's cells); the independent-rounds prediction
is reported beside it. A warm-up wave goes first and is left out: the first
seconds of a run cost 4-5x the transport overhead of the rest, which bent the
low-delay end of every line.
"""
from __future__ import annotations

import time

import numpy as np
import polars as pl

from control.profile import Profile, profile_from_dict
from control.theory import best_length, critical_delay, expected_tokens, ms_per_token
from pipeline.transport import aio
from pipeline.analysis import calibrate_rounds, load_run
from pipeline.analysis.stats import ratio_ci
from pipeline.experiments.lab import Cell, Lab, LabConfig, config_dict, elapsed, lab_prompts, logged, measured, save
from pipeline.experiments.refusals import (
    crossing_refusals, emulation_overruns, failed_requests, too_few_rounds, transport_overhead,
)

QUICK_DELAYS = (0.0, 10.0, 20.0, 40.0, 70.0, 100.0, 150.0)
FULL_DELAYS = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 55.0, 70.0, 85.0, 100.0, 125.0, 150.0)


def edge_of(d: float) -> str:
    return f"edge-d{d:g}".replace(".", "p")


def measured_grid(rounds: pl.DataFrame, delays, lengths) -> dict:
    out = {}
    for d in delays:
        for L in lengths:
            g = rounds.filter((pl.col("edge_id") == edge_of(d)) & (pl.col("policy") == f"fixed:{L}"))
            j, lo, hi = ratio_ci(g)
            out[(d, L)] = {"ms_per_token": j, "ci": [lo, hi], "rounds": g.height}
    return out


def _prompt_sums(rounds: pl.DataFrame, by: str, cols: list[str]) -> dict:
    """{group: array (prompt index x cols+1) of per-prompt sums and round counts}. Request i of every cell
    has prompt i, so resampling prompt indices jointly keeps the pairing of the cells."""
    per = (rounds.with_columns(pl.col("request_id").str.extract(r"-(\d+)$").cast(pl.Int64).alias("prompt"))
           .group_by([by, "prompt"]).agg([pl.col(c).sum() for c in cols] + [pl.len().alias("n_rounds")]))
    n = int(per["prompt"].max()) + 1
    out = {}
    for (key,), g in per.group_by([by]):
        a = np.zeros((n, len(cols) + 1))
        a[g["prompt"].to_numpy()] = g.select([*cols, "n_rounds"]).to_numpy().astype(float)
        out[key] = a
    return out


def critical_delay_intervals(rounds: pl.DataFrame, cal_rounds: pl.DataFrame, delays, lengths,
                             resamples: int = 200, seed: int = 0) -> dict:
    """95 % bootstrap intervals (prompts resampled, jointly across the paired cells) of the measured and the
    predicted critical delay. Near-parallel lines make it a fragile number; these say how far apart two
    runs of the same experiment may land."""
    rng = np.random.default_rng(seed)
    grid_sums = _prompt_sums(rounds.with_columns(
        (pl.col("edge_id") + "|" + pl.col("policy")).alias("cell")), "cell", ["round_ms", "tokens"])
    cal_sums = _prompt_sums(cal_rounds.with_columns(
        (pl.col("round_ms") - pl.col("link_ms").fill_null(0.0)).alias("compute_ms")),
        "policy", ["compute_ms", "tokens"])
    n = max(len(a) for a in [*grid_sums.values(), *cal_sums.values()])
    measured, predicted, ratio = [], [], []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        grid = {}
        for d in delays:
            for L in lengths:
                a = grid_sums.get(f"{edge_of(d)}|fixed:{L}")
                b = None if a is None else a[pick[pick < len(a)]].sum(axis=0)
                grid[(d, L)] = {"ms_per_token": b[0] / b[1] if b is not None and b[1] > 0 else None}
        measured.append(crossing_delay(grid, delays, lengths))
        cal = [cal_sums.get(f"fixed:{L}") for L in lengths]
        sums = [None if a is None else a[pick[pick < len(a)]].sum(axis=0) for a in cal]
        if all(b is not None and b[2] > 0 for b in sums):
            comp = np.array([b[0] / b[2] for b in sums])
            predicted.append(critical_delay(Profile("bootstrap", comp, np.ones(len(lengths))),
                                            np.array([b[1] / b[2] for b in sums])))
            if measured[-1] is not None and predicted[-1] > 0:
                ratio.append(measured[-1] / predicted[-1])

    def ci(xs):
        xs = np.array([x for x in xs if x is not None and np.isfinite(x)])
        return [_r(v) for v in np.percentile(xs, [2.5, 97.5])] if len(xs) else None

    return {"measured_ci": ci(measured), "predicted_ci": ci(predicted), "ratio_ci": ci(ratio),
            "measured_resamples": measured}


def crossing_delay(grid: dict, delays, lengths) -> float | None:
    """Where the fitted line J_L(d) of some L >= 2 first falls below the line of L = 1."""
    lines = {}
    for L in lengths:
        ds = np.array([d for d in delays if grid[(d, L)]["ms_per_token"] is not None])
        js = np.array([grid[(d, L)]["ms_per_token"] for d in ds])
        if len(ds) >= 2:
            lines[L] = np.polyfit(ds, js, 1)  # (slope, intercept)
    if 1 not in lines:
        return None
    s1, a1 = lines[1]
    best = None
    for L, (s, a) in lines.items():
        if L == 1:
            continue
        if a <= a1:
            cross = 0.0
        elif s < s1:
            cross = (a - a1) / (s1 - s)
        else:
            continue  # never better than L = 1
        best = cross if best is None else min(best, cross)
    return None if best is None else float(best)


async def _phase(cfg: LabConfig, progress=None) -> dict:
    t0 = time.perf_counter()
    delays = QUICK_DELAYS if cfg.quick else FULL_DELAYS
    lengths = list(range(1, cfg.max_length + 1))
    per_cell = 6 if cfg.quick else 16
    prompts = lab_prompts(per_cell, seed=cfg.seed)
    channels = {"edge-cal": "const:0", **{edge_of(d): f"const:{d:g}" for d in delays}}
    with Lab(cfg, "phase", channels) as lab:
        emulation = lab.emulation()
        results = await lab.run(wave(delays, lengths, per_cell), prompts, progress, warm_up=2 * cfg.concurrency)
        res = phase_result(await logged(lab.run_dir, results), delays, lengths, cfg.max_length, cfg.seed)
        close = refine_delays(res, delays)
        if close:  # the lines cross where they are nearly parallel: more rounds there, same pairing rules
            more = lab_prompts(per_cell, seed=cfg.seed + 7)
            results += await lab.run(wave(close, lengths, per_cell, offset=per_cell), prompts + more, progress)
            res = phase_result(await logged(lab.run_dir, results), delays, lengths, cfg.max_length, cfg.seed)
        run_dir = lab.run_dir
    rounds = measured(load_run(run_dir).rounds)
    n_failed = sum(len(r.failed) for r in results)
    refused = [*res.pop("refused"),
               *(x for x in (emulation_overruns(rounds, emulation), transport_overhead(rounds),
                             failed_requests(n_failed, sum(len(r.streams) for r in results))) if x is not None)]
    return {"experiment": "phase", "config": config_dict(cfg), "emulation": emulation, "run_dir": str(run_dir),
            **res, "refined_delays": list(close), "refused": [r.to_dict() for r in refused],
            "failed_requests": n_failed, "wall_s": elapsed(t0)}


def wave(delays, lengths: list[int], per_cell: int, offset: int = 0) -> list[Cell]:
    """Calibration cells (every length twice at zero delay, on the grid's prompts, so they interleave with
    the grid under the same load: the same acceptance, half the compute noise of one pass) and the grid's
    cells (every length at every delay), all on prompts offset.. offset + per_cell."""
    cells = [Cell("edge-cal", f"fixed:{L}", per_cell, offset, tag=f"cal-{L}-{k}") for L in lengths for k in "ab"]
    return cells + [Cell(edge_of(d), f"fixed:{L}", per_cell, offset) for d in delays for L in lengths]


def refine_delays(res: dict, delays) -> list[float]:
    """The grid's delays up to the crossing's upper bound (at least the three lowest), when the first wave
    could not pin the crossing: there the lines of the competing lengths are within noise of each other."""
    if not any(r.check in ("lines_too_close", "no_transition") for r in res["refused"]):
        return []
    dc = res["critical_delay_ms"]
    top = max([x for x in (*(dc.get("measured_ci") or ()), *(dc.get("predicted_ci") or ())) if x is not None],
              default=0.0)
    return [d for i, d in enumerate(delays) if d <= 1.5 * top or i < 3]


def phase_result(rounds: pl.DataFrame, delays, lengths: list[int], max_length: int, seed: int = 0) -> dict:
    """Calibration, prediction and measurement from a phase run's rounds (warm-up dropped)."""
    cal_rounds = rounds.filter(pl.col("edge_id") == "edge-cal")
    cal = calibrate_rounds(cal_rounds, max_length, name="phase-calibration")
    profile = profile_from_dict(cal, "phase calibration")
    per_policy, tokens = policy_costs(cal_rounds, lengths, profile)
    grid = measured_grid(rounds.filter(pl.col("edge_id") != "edge-cal"), delays, lengths)
    rows = []
    for d in delays:
        cells_d = {L: grid[(d, L)] for L in lengths if grid[(d, L)]["ms_per_token"] is not None}
        measured_best = min(cells_d, key=lambda L: cells_d[L]["ms_per_token"]) if cells_d else None
        best_hi = cells_d[measured_best]["ci"][1] if cells_d else None
        tied = sorted(L for L, c in cells_d.items()
                      if None not in (c["ci"][0], best_hi) and c["ci"][0] <= best_hi)
        predicted, predicted_j = best_length(per_policy, d, tokens)
        rows.append({"delay_ms": d, "measured_best": measured_best, "indistinguishable": tied,
                     "predicted_best": predicted, "predicted_ms_per_token": round(predicted_j, 2),
                     "predicted_best_independent_rounds": best_length(profile, d)[0],
                     "measured_ms_per_token": {str(L): _r(c["ms_per_token"]) for L, c in cells_d.items()},
                     "ci": {str(L): [_r(x) for x in c["ci"]] for L, c in cells_d.items()},
                     "theory_ms_per_token": {str(L): round(float(x), 2)
                                             for L, x in zip(lengths, ms_per_token(per_policy, d, tokens))},
                     "agrees": predicted in tied})
    measured_dc = crossing_delay(grid, delays, lengths)
    predicted_dc = critical_delay(per_policy, tokens)
    intervals = critical_delay_intervals(rounds.filter(pl.col("edge_id") != "edge-cal"),
                                         cal_rounds, delays, lengths, seed=seed)
    boot = intervals.pop("measured_resamples")
    refused = crossing_refusals(measured_dc, predicted_dc if np.isfinite(predicted_dc) else None, boot)
    counts = {f"fixed:{L} at {d:g} ms": grid[(d, L)]["rounds"] for d in delays for L in lengths}
    refused += [x for x in (too_few_rounds(counts),) if x is not None]
    within = (not refused and measured_dc is not None and np.isfinite(predicted_dc)
              and abs(measured_dc - predicted_dc) <= 0.2 * max(predicted_dc, 1e-9))
    return {"refused": refused,
        "calibration": cal, "delays": list(delays), "rows": rows,
        "critical_delay_ms": {"measured": _r(measured_dc), "predicted": _r(predicted_dc), "within_20pct": bool(within),
                              "predicted_independent_rounds": _r(critical_delay(profile)), **intervals},
        "best_length_agrees_everywhere": all(r["agrees"] for r in rows),
    }


def policy_costs(cal_rounds: pl.DataFrame, lengths: list[int], profile: Profile) -> tuple[Profile, np.ndarray]:
    """C and B of each fixed:L policy as the calibration measured them: what a grid cell of fixed:L pays
    per round, its last round cut short by the token budget included. A length nobody played keeps the
    profile's C(L) and the survival's B(L)."""
    compute, tokens = profile.compute_ms.copy(), expected_tokens(profile.survival)
    costed = cal_rounds.with_columns((pl.col("round_ms") - pl.col("link_ms").fill_null(0.0)).alias("compute_ms"))
    for i, L in enumerate(lengths):
        g = costed.filter(pl.col("policy") == f"fixed:{L}")
        if g.height:
            compute[i], tokens[i] = g["compute_ms"].mean(), g["tokens"].mean()
    return Profile(f"{profile.name} per policy", compute, profile.survival), tokens


def _r(x):
    return None if x is None else round(float(x), 2)


def phase(cfg: LabConfig, progress=None) -> dict:
    result = aio.run(_phase(cfg, progress))
    save(cfg, "phase", result)
    return result
