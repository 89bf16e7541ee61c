"""Policies on generated profile families, against each scenario's correct oracle.

For every profile and scenario (each constant delay of DELAYS, plus a wall-clock
drift and a wall-clock Markov channel): the mean, 90th percentile and worst seed
of each policy's gap to that scenario's oracle (control.simulator), realized and expected (the
same runs at each chosen length's expected time and tokens: the policy's choices alone). The
UCB-SpecStop baselines also run at every beta of a grid, and the best beta in
hindsight per profile is reported beside the paper's beta = 1, so `auto` is
compared with the best any beta could do. `specstop bench policies` prints it.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from control.families import DELAYS, all_families
from control.profile import Profile
from control.simulator import const_scenario, drift_scenario, markov_scenario, simulate

BETAS = (0.01, 0.1, 1.0, 10.0, 100.0)
TUNED = ("ucb-specstop", "ucb-specstop-scaled")


DRIFT = (20.0, 150.0, 500.0)
MARKOV = (20.0, 150.0)
MARKOV_DWELL_ROUNDS = 20.0  # mean dwell, in oracle rounds at the mean delay


def scenarios(profile: Profile, delays, rounds: int, changing: bool = True) -> list:
    out = [const_scenario(profile, d, rounds) for d in delays]
    if changing:
        out.append(drift_scenario(profile, list(DRIFT), rounds))
        out.append(markov_scenario(profile, list(MARKOV), rounds, None, seed=0, stay=1 - 1 / MARKOV_DWELL_ROUNDS))
    return out


def _one(args) -> dict:
    profile, policies, delays, rounds, seeds, tuned, changing = args
    specs = list(policies) + ([f"{name}:{b:g}" for name in TUNED for b in BETAS] if tuned else [])
    scs = scenarios(profile, delays, rounds, changing)
    res = simulate(profile, specs, scs, seeds)
    rows = {}
    for sc in res["scenarios"]:
        for spec, v in sc["policies"].items():
            rows.setdefault(spec, {})[sc["label"]] = {
                "mean": v["gap_pct"], "p90": v["gap_pct_p90"], "worst": v["gap_pct_worst"],
                "expected_mean": v["expected_gap_pct"], "expected_p90": v["expected_gap_pct_p90"],
                "expected_worst": v["expected_gap_pct_worst"]}
    out = {"profile": profile.name, "policies": {p: rows[p] for p in policies}, "best_beta": {}}
    labels = [sc["label"] for sc in res["scenarios"]]
    for name in TUNED if tuned else ():
        best = min(BETAS, key=lambda b: np.mean([rows[f"{name}:{b:g}"][x]["mean"] for x in labels]))
        out["policies"][f"{name} (best beta)"] = rows[f"{name}:{best:g}"]
        out["best_beta"][name] = best
    return out


def _summary(cells: list, gap: str = "") -> dict:
    """Mean, worst cell, worst p90, worst seed and cells over each target of one gap over
    (profile, label, row) cells; gap "" is the realized gap, "expected_" the expected one."""
    mean, p90, worst = f"{gap}mean", f"{gap}p90", f"{gap}worst"
    top = max(cells, key=lambda x: x[2][mean])
    seed = max(cells, key=lambda x: x[2][worst])
    return {"mean_gap_pct": round(float(np.mean([c[mean] for _, _, c in cells])), 3),
            "worst_mean_gap_pct": round(float(top[2][mean]), 3),
            "worst_mean_cell": f"{top[0]} / {top[1]}",
            "worst_p90_pct": round(float(max(c[p90] for _, _, c in cells)), 3),
            "worst_seed_pct": round(float(seed[2][worst]), 3),
            "worst_seed_cell": f"{seed[0]} / {seed[1]}",
            "cells_over_1pct_mean": sum(c[mean] > 1.0 for _, _, c in cells),
            "cells_over_3pct_worst_seed": sum(c[worst] > 3.0 for _, _, c in cells)}


def evaluate(profiles: list[Profile] | None = None, policies=("auto", "ucb-specstop", "naive-ucb"),
             delays=DELAYS, rounds: int = 1000, seeds: int = 20, workers: int = 2, tuned: bool = True,
             changing: bool = True) -> dict:
    profiles = profiles or all_families()
    jobs = [(p, tuple(policies), tuple(delays), rounds, seeds, tuned, changing) for p in profiles]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per = list(pool.map(_one, jobs))
    else:
        per = [_one(j) for j in jobs]
    summary = {}
    for spec in per[0]["policies"]:
        cells = [(r["profile"], label, c) for r in per for label, c in r["policies"][spec].items()]
        summary[spec] = {**_summary(cells), "expected": _summary(cells, "expected_"), "cells": len(cells)}
    return {"profiles": len(profiles), "delays": list(delays), "rounds": rounds, "seeds": seeds,
            "scenarios": "const per delay" + (f", drift {DRIFT}, markov {MARKOV}" if changing else ""),
            "summary": summary, "per_profile": per}
