"""Per-token stop rules in the simulator (issue 23): `auto` with a head against SpecDec++ and
hf-confidence, the best fixed length and the best per-token threshold in hindsight.

control.token_signal gives every drafted token its own acceptance probability around its position's
hazard and the drafter a noisy reading of it, so a rule that stops on a token's signal has something to
read and can beat every fixed length. Per (profile, delay) cell, on the same seeds and tokens:

* `auto` (its Dinkelbach stop rule on the signal, no profile), the same with its look-ahead stop rule
  (`control.policies.auto.STOP_LOOKAHEAD`, off by default) and `auto` without a head (its fixed-length
  path on the same tokens);
* `specdec++-delay` (the delay-aware threshold from the profile), `hf-confidence` (threshold 0.4, reading
  the same signal: generous to it, whose live signal is the draft's own probability);
* the references, from the run itself: the best fixed length in hindsight (every length 1..K played on
  these tokens) and the best SpecDec++ threshold in hindsight (`specdec++:H` over a grid of H, the least
  ms/token per cell). Every gap is to the better of the two.

    python -m pipeline.bench.token_rules --seeds 5 --rounds 1000 --json
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import control.policies.auto as auto_module
from control.evaluation import kind_profiles
from control.families import DELAYS
from control.policies import make_policy
from control.profile import Profile
from control.simulator import const_scenario, run_policy
from control.token_signal import TokenSignal

THRESHOLDS = tuple(round(float(h), 2) for h in np.linspace(0.05, 0.95, 19)) + (0.99,)
RULES = ("auto", "auto (look-ahead)", "auto (no head)", "specdec++-delay", "hf-confidence")
REFERENCES = ("best fixed length", "best threshold in hindsight")


def _ms(profile: Profile, spec: str, sc, seeds: int, signal: TokenSignal, head: bool = True) -> float:
    """Mean over seeds of the realized ms/token."""
    out = []
    for s in range(seeds):
        policy = make_policy(spec, max_length=profile.max_length, seed=s, profile=profile)
        if not head:
            policy.stop_signal = None  # the fixed-length path: no rule reads the tokens
        out.append(run_policy(policy, profile, sc, s, signal=signal).ms_per_token)
    return float(np.mean(out))


def _look_ahead_ms(profile: Profile, sc, seeds: int, signal: TokenSignal) -> float:
    saved, auto_module.STOP_LOOKAHEAD = auto_module.STOP_LOOKAHEAD, True
    try:
        return _ms(profile, "auto", sc, seeds, signal)
    finally:
        auto_module.STOP_LOOKAHEAD = saved


def _cells(args) -> dict:
    profile, delays, rounds, seeds, signal = args
    cells = {}
    for d in delays:
        sc = const_scenario(profile, d, rounds)
        by_L = {L: _ms(profile, f"fixed:{L}", sc, seeds, signal) for L in range(1, profile.max_length + 1)}
        best_L = min(by_L, key=by_L.get)
        fixed = by_L[best_L]
        by_h = {h: _ms(profile, f"specdec++:{h:g}", sc, seeds, signal) for h in THRESHOLDS}
        best_h = min(by_h, key=by_h.get)
        ms = {"auto": _ms(profile, "auto", sc, seeds, signal),
              "auto (look-ahead)": _look_ahead_ms(profile, sc, seeds, signal),
              "auto (no head)": _ms(profile, "auto", sc, seeds, signal, head=False),
              "specdec++-delay": _ms(profile, "specdec++-delay", sc, seeds, signal),
              "hf-confidence": _ms(profile, "hf-confidence", sc, seeds, signal),
              "best fixed length": fixed, "best threshold in hindsight": by_h[best_h]}
        ref = min(fixed, by_h[best_h])
        cells[f"const {d:g} ms"] = {"ms_per_token": {k: round(v, 3) for k, v in ms.items()},
                                    "best_threshold": best_h, "best_fixed_length": best_L,
                                    "profile_oracle_length": int(sc.oracle_lengths[0]),
                                    "gap_pct": {k: round(100.0 * (v / ref - 1.0), 3) for k, v in ms.items()}}
    return {"profile": profile.name, "cells": cells}


def bench(seeds: int = 5, rounds: int = 1000, delays=DELAYS, workers: int = 2, signal: TokenSignal | None = None,
          profiles: list[Profile] | None = None) -> dict:
    signal = signal or TokenSignal()
    ps = profiles if profiles is not None else kind_profiles("families", 1, 0)
    jobs = [(p, tuple(delays), rounds, seeds, signal) for p in ps]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            per = list(pool.map(_cells, jobs))
    else:
        per = [_cells(j) for j in jobs]
    cells = [c for r in per for c in r["cells"].values()]
    summary = {}
    for name in RULES + REFERENCES:
        gaps = [c["gap_pct"][name] for c in cells]
        summary[name] = {"mean_gap_pct": round(float(np.mean(gaps)), 3), "worst_gap_pct": round(max(gaps), 3)}
    for name in ("auto", "auto (look-ahead)"):
        summary[name]["cells_behind_a_rule"] = sum(
            any(c["gap_pct"][r] < c["gap_pct"][name] for r in ("specdec++-delay", "hf-confidence")) for c in cells)
        summary[name]["cells_behind_the_threshold_in_hindsight"] = sum(
            c["gap_pct"][name] > c["gap_pct"]["best threshold in hindsight"] for c in cells)
    return {"signal": {"spread": signal.spread, "persistence": signal.persistence, "noise": signal.noise}, "seeds": seeds,
            "rounds": rounds, "delays": list(delays), "profiles": len(per), "cells": len(cells),
            "thresholds": list(THRESHOLDS), "summary": summary, "per_profile": per}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--delays", default=",".join(f"{d:g}" for d in DELAYS), help="one-way ms, comma-separated")
    p.add_argument("--spread", type=float, default=TokenSignal.spread)
    p.add_argument("--persistence", type=float, default=TokenSignal.persistence)
    p.add_argument("--noise", type=float, default=TokenSignal.noise)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    try:
        delays = tuple(float(x) for x in a.delays.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"token_rules: --delays {a.delays!r} is not a comma-separated list of ms") from None
    if a.seeds < 1 or a.rounds < 3 or a.workers < 1 or not delays or min(delays) < 0:
        raise SystemExit("token_rules: --seeds and --workers must be >= 1, --rounds >= 3, delays >= 0")
    t0 = time.perf_counter()
    res = bench(a.seeds, a.rounds, delays, a.workers, TokenSignal(a.spread, a.persistence, a.noise))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res))
        return
    print(f"{res['profiles']} profiles x {len(delays)} delays, {a.rounds} rounds, {a.seeds} seeds ({res['wall_s']} s); "
          "gap % to the better of the best fixed length and the best threshold in hindsight")
    for name, s in res["summary"].items():
        print(f"  {name:<30} mean {s['mean_gap_pct']:7.3f}  worst {s['worst_gap_pct']:7.3f}")
    print(f"  auto behind specdec++-delay or hf-confidence in {res['summary']['auto']['cells_behind_a_rule']} of "
          f"{res['cells']} cells, behind the threshold in hindsight in "
          f"{res['summary']['auto']['cells_behind_the_threshold_in_hindsight']}")


if __name__ == "__main__":
    main()
