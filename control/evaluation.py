"""Policies on generated profile families, against each scenario's correct oracle.

For every profile and constant delay: the mean, 90th percentile and worst seed
of each policy's gap to the oracle (the best fixed length: the right optimum
for a constant delay). The UCB-SpecStop baselines also run at every beta of a
grid, and the best beta in hindsight per profile is reported beside the
paper's beta = 1, so `auto` is compared with the best any beta could do.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from control.families import DELAYS, all_families
from control.profile import Profile
from control.simulator import const_scenario, simulate

BETAS = (0.01, 0.1, 1.0, 10.0, 100.0)
TUNED = ("ucb-specstop", "ucb-specstop-scaled")


def _one(args) -> dict:
    profile, policies, delays, rounds, seeds, tuned = args
    specs = list(policies) + ([f"{name}:{b:g}" for name in TUNED for b in BETAS] if tuned else [])
    res = simulate(profile, specs, [const_scenario(profile, d, rounds) for d in delays], seeds)
    rows = {}
    for sc, d in zip(res["scenarios"], delays):
        for spec, v in sc["policies"].items():
            rows.setdefault(spec, {})[d] = {"mean": v["gap_pct"], "p90": v["gap_pct_p90"], "worst": v["gap_pct_worst"]}
    out = {"profile": profile.name, "policies": {p: rows[p] for p in policies}, "best_beta": {}}
    for name in TUNED if tuned else ():
        best = min(BETAS, key=lambda b: np.mean([rows[f"{name}:{b:g}"][d]["mean"] for d in delays]))
        out["policies"][f"{name} (best beta)"] = rows[f"{name}:{best:g}"]
        out["best_beta"][name] = best
    return out


def evaluate(profiles: list[Profile] | None = None, policies=("auto", "ucb-specstop", "naive-ucb"),
             delays=DELAYS, rounds: int = 1000, seeds: int = 20, workers: int = 2, tuned: bool = True) -> dict:
    profiles = profiles or all_families()
    jobs = [(p, tuple(policies), tuple(delays), rounds, seeds, tuned) for p in profiles]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per = list(pool.map(_one, jobs))
    else:
        per = [_one(j) for j in jobs]
    summary = {}
    for spec in per[0]["policies"]:
        cells = [c for r in per for c in r["policies"][spec].values()]
        summary[spec] = {"mean_gap_pct": round(float(np.mean([c["mean"] for c in cells])), 3),
                        "worst_mean_gap_pct": round(float(max(c["mean"] for c in cells)), 3),
                        "worst_p90_pct": round(float(max(c["p90"] for c in cells)), 3),
                        "worst_seed_pct": round(float(max(c["worst"] for c in cells)), 3)}
    return {"profiles": len(profiles), "delays": list(delays), "rounds": rounds, "seeds": seeds,
            "summary": summary, "per_profile": per}
