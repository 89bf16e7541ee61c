"""Policies on generated profile families, against each scenario's correct oracle.

For every profile and scenario (each constant delay of DELAYS, plus a wall-clock
drift and a wall-clock Markov channel): the mean, 90th percentile and worst seed
of each policy's gap to that scenario's oracle (control.simulator), realized and expected (the
same runs at each chosen length's expected time and tokens: the policy's choices alone). The
UCB-SpecStop baselines also run at every beta of a grid, and the best beta in
hindsight per profile is reported beside the paper's beta = 1, so `auto` is
compared with the best any beta could do. `specstop bench policies` prints it.

Kinds (`kinds`): "families" is the above; the kinds of issue 23 (control.families) are
"non-affine" (jump-compute members at every constant delay), "jitter" (one member per family
under per-round delay jitter at JITTER_MEDIANS, told the median of the last five), "streaky"
(hidden easy/hard acceptance regimes at STREAKY_DELAYS, against the belief-MDP oracle) and
"short" (the families at every constant delay over their first SHORT_ROUNDS rounds).
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import numpy as np

from control.families import COMPUTE, ACCEPTANCE, DELAYS, all_families, non_affine_family, streaky_family
from control.profile import Profile
from control.simulator import (const_scenario, drift_scenario, jitter_scenario, markov_scenario, simulate,
                               streaky_scenario)

BETAS = (0.01, 0.1, 1.0, 10.0, 100.0)
TUNED = ("ucb-specstop", "ucb-specstop-scaled")


DRIFT = (20.0, 150.0, 500.0)
MARKOV = (20.0, 150.0)
MARKOV_DWELL_ROUNDS = 20.0  # mean dwell, in oracle rounds at the mean delay
KINDS = ("families", "non-affine", "jitter", "streaky", "short")
JITTER_MEDIANS = (20.0, 55.0, 100.0, 200.0)
STREAKY_DELAYS = (5.0, 20.0, 55.0, 100.0, 200.0, 500.0)
SHORT_ROUNDS = 200
RIVALS_NEW = ("hf-heuristic",)  # also run on the new kinds: the +2/-1 schedule follows streaks


def kind_profiles(kind: str, members: int = 3, seed: int = 0) -> list[Profile]:
    if kind in ("families", "short"):
        return all_families(members=members, seed=seed)
    if kind == "jitter":
        return all_families(members=1, seed=seed)
    if kind == "non-affine":
        return [p for a in ACCEPTANCE for c in COMPUTE for p in non_affine_family(a, c, max(1, members - 1), seed=seed)]
    if kind == "streaky":
        return [p for c in COMPUTE for p in streaky_family(c, members, seed=seed)]
    raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")


def kind_scenarios(kind: str, profile: Profile, delays, rounds: int, changing: bool = True) -> list:
    if kind == "families":
        return scenarios(profile, delays, rounds, changing)
    if kind == "non-affine":
        return [const_scenario(profile, d, rounds) for d in delays]
    if kind == "short":
        return [const_scenario(profile, d, min(rounds, SHORT_ROUNDS)) for d in delays]
    if kind == "jitter":
        return [jitter_scenario(profile, d, rounds) for d in JITTER_MEDIANS]
    if kind == "streaky":
        return [streaky_scenario(profile, profile.regimes, d, rounds) for d in STREAKY_DELAYS]
    raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")


def scenarios(profile: Profile, delays, rounds: int, changing: bool = True) -> list:
    out = [const_scenario(profile, d, rounds) for d in delays]
    if changing:
        out.append(drift_scenario(profile, list(DRIFT), rounds))
        out.append(markov_scenario(profile, list(MARKOV), rounds, None, seed=0, stay=1 - 1 / MARKOV_DWELL_ROUNDS))
    return out


def _one(args) -> dict:
    profile, policies, delays, rounds, seeds, tuned, changing, kind, calibration = args
    specs = list(policies) + ([f"{name}:{b:g}" for name in TUNED for b in BETAS] if tuned else [])
    scs = kind_scenarios(kind, profile, delays, rounds, changing)
    res = simulate(profile, specs, scs, seeds, calibration=calibration)
    rows = {}
    for sc in res["scenarios"]:
        for spec, v in sc["policies"].items():
            rows.setdefault(spec, {})[sc["label"]] = {
                "mean": v["gap_pct"], "p90": v["gap_pct_p90"], "worst": v["gap_pct_worst"],
                "expected_mean": v["expected_gap_pct"], "expected_p90": v["expected_gap_pct_p90"],
                "expected_worst": v["expected_gap_pct_worst"],
                "seeds": v["gap_pct_seeds"], "expected_seeds": v["expected_gap_pct_seeds"]}
    out = {"profile": profile.name, "kind": kind, "policies": {p: rows[p] for p in policies}, "best_beta": {}}
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


# two-sided 95 % Student t quantiles by degrees of freedom (numpy has none); past 30, the normal's
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def clearly_above(diffs) -> bool:
    """Whether paired differences are above zero beyond their 95 % interval (mean - t * stderr > 0)."""
    d = np.asarray(diffs, float)
    if len(d) < 2:
        return False
    t = T975[len(d) - 2] if len(d) - 1 <= len(T975) else 1.96
    return bool(d.mean() - t * d.std(ddof=1) / np.sqrt(len(d)) > 0)


def _behind(per: list, spec: str, gap: str, clear: bool = False) -> int | None:
    """Cells where some other policy's mean gap (`gap`: "mean" or "expected_mean") is below `spec`'s; with
    `clear`, only where the paired per-seed difference is above zero beyond its 95 % interval (five seeds
    put a rival 0.02 % ahead by luck; None where a row has no per-seed gaps, e.g. an older saved run)."""
    seeds = "seeds" if gap == "mean" else "expected_seeds"
    n = 0
    for r in per:
        mine = r["policies"][spec]
        for label, c in mine.items():
            rivals = [v[label] for other, v in r["policies"].items() if other != spec]
            if clear:
                if seeds not in c or any(seeds not in v for v in rivals):
                    return None
                n += any(clearly_above(np.subtract(c[seeds], v[seeds])) for v in rivals)
            else:
                n += any(v[gap] < c[gap] for v in rivals)
    return n


def evaluate(profiles: list[Profile] | None = None, policies=("auto", "ucb-specstop", "naive-ucb"),
             delays=DELAYS, rounds: int = 1000, seeds: int = 20, workers: int = 2, tuned: bool = True,
             changing: bool = True, kinds=("families",), members: int = 3, family_seed: int = 0,
             progress: Callable[[], None] | None = None, calibration: int = 0) -> dict:
    """Every kind's profiles x scenarios; `profiles` replaces the "families" kind's members; `progress` is
    called once per profile done (in the order they finish); `calibration`: start-up calibration rounds
    per length every policy gets first (control.simulator.calibrate_policy)."""
    jobs = []
    for kind in kinds:
        ps = profiles if (profiles is not None and kind == "families") else kind_profiles(kind, members, family_seed)
        specs = tuple(policies) + (tuple(r for r in RIVALS_NEW if r not in policies) if kind != "families" else ())
        jobs += [(p, specs, tuple(delays), rounds, seeds, tuned, changing, kind, calibration) for p in ps]
    per: list[dict] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(_one, jobs):  # in the jobs' order: the results do not depend on the workers
                per.append(r)
                if progress:
                    progress()
    else:
        for j in jobs:
            per.append(_one(j))
            if progress:
                progress()
    out = {"profiles": len(per), "delays": list(delays), "rounds": rounds, "seeds": seeds, "calibration": calibration,
           "scenarios": "const per delay" + (f", drift {DRIFT}, markov {MARKOV}" if changing else ""),
           "kinds": list(kinds), "by_kind": {}, "per_profile": per}
    for kind in kinds:
        rows = [r for r in per if r["kind"] == kind]
        summary = {}
        for spec in rows[0]["policies"]:
            cells = [(r["profile"], label, c) for r in rows for label, c in r["policies"][spec].items()]
            summary[spec] = {**_summary(cells), "expected": _summary(cells, "expected_"), "cells": len(cells),
                             "cells_behind_a_rival": _behind(rows, spec, "mean"),
                             "expected_cells_behind_a_rival": _behind(rows, spec, "expected_mean"),
                             "cells_clearly_behind_a_rival": _behind(rows, spec, "mean", clear=True),
                             "expected_cells_clearly_behind_a_rival": _behind(rows, spec, "expected_mean", clear=True)}
        out["by_kind"][kind] = summary
    out["summary"] = out["by_kind"][kinds[0]]
    return out
