"""Where `auto`'s gap over a short horizon is paid: the same runs with `auto` told the compute, told
the acceptance, or both, beside two reference plays (the opening then the oracle's length; the
second-best fixed length).

`auto` learns two things at once, the round compute C(L) and the per-position acceptance h(i). Told one
of them exactly (its counts pre-filled with 1,000 rounds' worth of the truth), what is left of the gap is
the cost of learning the other; told both, what is left is the cost of its own rules (dither, optimism).
The runs are the `short` kind's cells of `specstop bench policies --quick` (one member per family, every
constant delay, 200 rounds, seeds paired with the oracle), so the `auto` row equals that bench's.

    python -m pipeline.bench.auto_decompose --seeds 5 --json
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from control.evaluation import SHORT_ROUNDS, kind_profiles, kind_scenarios
from control.families import DELAYS
from control.policies.auto import AutoPolicy
from control.profile import Profile
from control.simulator import expected_ms_per_token, run_policy
from control.theory import ms_per_token

TOLD_ROUNDS = 1000.0  # pseudo-rounds of the truth behind what `auto` is told
JITTER = 0.1  # the simulator's compute jitter (uniform +-10 %), whose variance the told compute carries
VARIANTS = ("auto", "auto told compute", "auto told acceptance", "auto told both", "opening then oracle",
            "second-best fixed")


class Replay:
    """Plays a given sequence of lengths (the last one from then on) and learns nothing."""

    def __init__(self, lengths: list[int]):
        self.lengths, self.i = lengths, 0

    def choose(self, ctx) -> int:
        L = self.lengths[min(self.i, len(self.lengths) - 1)]
        self.i += 1
        return L

    def observe(self, outcome) -> None:
        pass


def told_auto(profile: Profile, seed: int, compute: bool, acceptance: bool) -> AutoPolicy:
    """`auto` with its compute and/or acceptance counts pre-filled with the profile's truth. Told the
    compute, it also skips its two opening rounds (they exist to pin the compute slope)."""
    a = AutoPolicy(profile.max_length, seed=seed)
    n = TOLD_ROUNDS
    if compute:
        c = profile.compute_ms
        a.arm_n[:], a.arm_sum[:] = n, n * c
        a.arm_sq[:] = n * (c * c + (JITTER * c) ** 2 / 3.0)
        a.n_obs = 2
    if acceptance:
        s = profile.survival
        a.at_risk[:] = n * np.concatenate([[1.0], s[:-1]])
        a.accepted[:] = n * s
    return a


def _players(profile: Profile, delay: float) -> dict:
    j = ms_per_token(profile, delay)
    best, second = (int(i) + 1 for i in np.argsort(j)[:2])
    middle = profile.max_length // 2 + 1  # auto's opening: length 1, then the middle length
    return {"auto": lambda s: AutoPolicy(profile.max_length, seed=s),
            "auto told compute": lambda s: told_auto(profile, s, True, False),
            "auto told acceptance": lambda s: told_auto(profile, s, False, True),
            "auto told both": lambda s: told_auto(profile, s, True, True),
            "opening then oracle": lambda s: Replay([1, middle, best]),
            "second-best fixed": lambda s: Replay([second])}


def _profile_cells(args) -> dict:
    profile, seeds, rounds = args
    cells = {}
    for sc in kind_scenarios("short", profile, DELAYS, rounds):
        oracle = [run_policy(None, profile, sc, s, JITTER, sc.oracle_lengths) for s in range(seeds)]
        oracle_j = np.array([t.ms_per_token for t in oracle])
        oracle_e = np.array([expected_ms_per_token(t, sc, profile) for t in oracle])
        row = {}
        for name, make in _players(profile, float(sc.delays[0])).items():
            traces = [run_policy(make(s), profile, sc, s, JITTER) for s in range(seeds)]
            gap = 100.0 * (np.array([t.ms_per_token for t in traces]) / oracle_j - 1.0)
            expected = 100.0 * (np.array([expected_ms_per_token(t, sc, profile) for t in traces]) / oracle_e - 1.0)
            row[name] = {"mean": float(gap.mean()), "worst": float(gap.max()),
                         "expected_mean": float(expected.mean()), "expected_worst": float(expected.max())}
        cells[sc.label] = row
    return {"profile": profile.name, "cells": cells}


def decompose(seeds: int = 5, rounds: int = SHORT_ROUNDS, workers: int = 2, profiles: list[Profile] | None = None) -> dict:
    """Every variant on every (profile, delay) cell; per variant the summary the families bench prints."""
    ps = profiles if profiles is not None else kind_profiles("short", 1, 0)
    jobs = [(p, seeds, rounds) for p in ps]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per = list(pool.map(_profile_cells, jobs))
    else:
        per = [_profile_cells(j) for j in jobs]
    summary = {}
    for name in VARIANTS:
        cells = [c[name] for r in per for c in r["cells"].values()]
        summary[name] = {"mean_gap_pct": round(float(np.mean([c["mean"] for c in cells])), 3),
                         "worst_mean_gap_pct": round(max(c["mean"] for c in cells), 3),
                         "worst_seed_pct": round(max(c["worst"] for c in cells), 3),
                         "cells_over_3pct_worst_seed": sum(c["worst"] > 3.0 for c in cells),
                         "expected_mean_gap_pct": round(float(np.mean([c["expected_mean"] for c in cells])), 3),
                         "expected_worst_seed_pct": round(max(c["expected_worst"] for c in cells), 3)}
    by_delay = {}
    for label in per[0]["cells"] if per else ():
        by_delay[label] = {name: round(float(np.mean([r["cells"][label][name]["mean"] for r in per])), 3)
                           for name in VARIANTS}
    return {"kind": "short", "rounds": rounds, "seeds": seeds, "profiles": len(per), "summary": summary,
            "by_delay": by_delay, "per_profile": per}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=SHORT_ROUNDS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    a = p.parse_args()
    if a.seeds < 1 or a.rounds < 3 or a.workers < 1:
        raise SystemExit("auto_decompose: --seeds and --workers must be >= 1, --rounds >= 3")
    t0 = time.perf_counter()
    res = decompose(a.seeds, a.rounds, a.workers)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"short kind: {res['profiles']} profiles x {len(res['by_delay'])} delays, {a.rounds} rounds, {a.seeds} seeds "
          f"({res['wall_s']} s); realized gap to the oracle, %")
    print(f"{'variant':<22} {'mean':>6} {'worst cell':>10} {'worst seed':>10} {'seeds>3%':>8} {'exp mean':>8} {'exp worst':>9}")
    for name, s in res["summary"].items():
        print(f"{name:<22} {s['mean_gap_pct']:6.3f} {s['worst_mean_gap_pct']:10.2f} {s['worst_seed_pct']:10.2f} "
              f"{s['cells_over_3pct_worst_seed']:8d} {s['expected_mean_gap_pct']:8.3f} {s['expected_worst_seed_pct']:9.2f}")


if __name__ == "__main__":
    main()
