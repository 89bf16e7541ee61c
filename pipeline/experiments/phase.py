"""`specstop experiment phase`: fixed draft lengths over a delay grid, measured live.

The question of the seed paper: where is the critical delay below which one
drafted token per round is best, and how does the best length grow with the
delay? A calibration run (every length at zero delay, prompts of its own)
gives the profile; the theory then predicts the best length per delay and the
critical delay. The grid (every length at every delay, paired prompts)
measures them: ms/token per cell with a bootstrap interval, the best length
per delay, and the critical delay where the measured ms/token lines of L >= 2
cross the line of L = 1 (ms/token is linear in the delay for a fixed length).
"""
from __future__ import annotations

import time

import numpy as np
import polars as pl

from control.profile import profile_from_dict
from control.theory import best_length, critical_delay, ms_per_token
from pipeline.transport import aio
from pipeline.analysis import calibrate_rounds, load_run
from pipeline.analysis.stats import ratio_ci
from pipeline.experiments.lab import Cell, Lab, LabConfig, config_dict, elapsed, lab_prompts, save

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
    per_cal = 6 if cfg.quick else 16
    prompts = lab_prompts(per_cell + per_cal, seed=cfg.seed)
    channels = {"edge-cal": "const:0", **{edge_of(d): f"const:{d:g}" for d in delays}}
    cells = [Cell("edge-cal", f"fixed:{L}", per_cal, prompt_offset=per_cell, tag=f"cal-{L}") for L in lengths]
    cells += [Cell(edge_of(d), f"fixed:{L}", per_cell) for d in delays for L in lengths]
    with Lab(cfg, "phase", channels) as lab:
        results = await lab.run(cells, prompts, progress)
        emulation = lab.emulation()
        run_dir = lab.run_dir
    rounds = load_run(run_dir).rounds
    cal = calibrate_rounds(rounds.filter(pl.col("edge_id") == "edge-cal"), cfg.max_length, name="phase-calibration")
    profile = profile_from_dict(cal, "phase calibration")
    grid = measured_grid(rounds.filter(pl.col("edge_id") != "edge-cal"), delays, lengths)
    rows = []
    for d in delays:
        cells_d = {L: grid[(d, L)] for L in lengths if grid[(d, L)]["ms_per_token"] is not None}
        measured_best = min(cells_d, key=lambda L: cells_d[L]["ms_per_token"])
        best_hi = cells_d[measured_best]["ci"][1]
        tied = sorted(L for L, c in cells_d.items() if c["ci"][0] is not None and c["ci"][0] <= best_hi)
        predicted, predicted_j = best_length(profile, d)
        rows.append({"delay_ms": d, "measured_best": measured_best, "indistinguishable": tied,
                     "predicted_best": predicted, "predicted_ms_per_token": round(predicted_j, 2),
                     "measured_ms_per_token": {str(L): _r(c["ms_per_token"]) for L, c in cells_d.items()},
                     "ci": {str(L): [_r(x) for x in c["ci"]] for L, c in cells_d.items()},
                     "theory_ms_per_token": {str(L): round(float(x), 2)
                                             for L, x in zip(lengths, ms_per_token(profile, d))},
                     "agrees": predicted in tied})
    measured_dc = crossing_delay(grid, delays, lengths)
    predicted_dc = critical_delay(profile)
    within = (measured_dc is not None and np.isfinite(predicted_dc)
              and abs(measured_dc - predicted_dc) <= 0.2 * max(predicted_dc, 1e-9))
    return {
        "experiment": "phase", "config": config_dict(cfg), "emulation": emulation, "run_dir": str(run_dir),
        "calibration": cal, "delays": list(delays), "rows": rows,
        "critical_delay_ms": {"measured": _r(measured_dc), "predicted": _r(predicted_dc), "within_20pct": bool(within)},
        "best_length_agrees_everywhere": all(r["agrees"] for r in rows),
        "failed_requests": sum(len(r.failed) for r in results), "wall_s": elapsed(t0),
    }


def _r(x):
    return None if x is None else round(float(x), 2)


def phase(cfg: LabConfig, progress=None) -> dict:
    result = aio.run(_phase(cfg, progress))
    save(cfg, "phase", result)
    return result
