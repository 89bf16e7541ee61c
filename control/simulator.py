"""Offline simulator: policies against a profile under a delay scenario.

Round model: A = min(A_full, L) with A_full drawn from the profile's survival;
round time = C(L) * (1 + jitter * U[-1, 1]) + 2 d. Policies are compared on
common random numbers: round r of seed s uses the same uniforms for every policy.
ms/token is total time / total tokens over all rounds, exploration included.
Regret after n rounds is the pseudo-regret sum_r (E[T(L_r)] - lambda* B(L_r)),
lambda* the oracle's long-run ms/token for the delay in force (zero for the oracle).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from control.markov import MarkovChannel, solve_smdp
from control.policies import make_policy
from control.profile import Profile
from control.theory import best_length, expected_tokens
from control.types import ControlError, RoundContext, RoundOutcome

SCENARIOS = ("const", "drift", "markov")


@dataclass(frozen=True)
class Scenario:
    """One delay process. `delays[r]` and `states[r]` per round; `oracle_lengths[r]` and
    `oracle_lambda[r]` give the optimum in force at round r."""

    kind: str
    label: str
    delays: np.ndarray
    states: np.ndarray | None
    oracle_lengths: np.ndarray
    oracle_lambda: np.ndarray
    info: dict = field(default_factory=dict)


def const_scenario(profile: Profile, delay: float, rounds: int) -> Scenario:
    L, lam = best_length(profile, delay)
    return Scenario("const", f"const {delay:g} ms", np.full(rounds, float(delay)), None,
                    np.full(rounds, L), np.full(rounds, lam))


def drift_scenario(profile: Profile, delays: list[float], rounds: int) -> Scenario:
    """Piecewise-constant phases of equal length through `delays` (e.g. 20 -> 150)."""
    phase = np.minimum(np.arange(rounds) * len(delays) // rounds, len(delays) - 1)
    d = np.asarray(delays, float)[phase]
    best = [best_length(profile, x) for x in delays]
    return Scenario("drift", "drift " + " -> ".join(f"{x:g}" for x in delays), d, None,
                    np.array([best[p][0] for p in phase]), np.array([best[p][1] for p in phase]))


def markov_transitions(n: int, stay: float) -> np.ndarray:
    if not 0.0 <= stay <= 1.0:
        raise ControlError(f"markov stay probability must be in [0, 1], got {stay}")
    if n == 1:
        return np.ones((1, 1))
    p = np.full((n, n), (1.0 - stay) / (n - 1))
    np.fill_diagonal(p, stay)
    return p


def markov_scenario(profile: Profile, delays: list[float], rounds: int, stay: float, seed: int) -> Scenario:
    chan = MarkovChannel(np.asarray(delays, float), markov_transitions(len(delays), stay))
    sol = solve_smdp(profile, chan)
    rng = np.random.default_rng([seed, 7])
    s = np.empty(rounds, dtype=np.int64)
    s[0] = rng.choice(len(delays), p=chan.stationary())
    cum = np.cumsum(chan.transitions, axis=1)
    u = rng.random(rounds)
    for r in range(1, rounds):
        s[r] = min(int(np.searchsorted(cum[s[r - 1]], u[r])), len(delays) - 1)
    return Scenario("markov", f"markov {','.join(f'{x:g}' for x in delays)} stay {stay:g}",
                    chan.delays_ms[s], s, np.asarray(sol.lengths)[s], np.full(rounds, sol.ms_per_token),
                    {"smdp": sol.to_dict()})


@dataclass
class RunTrace:
    lengths: np.ndarray
    times: np.ndarray
    tokens: np.ndarray

    @property
    def ms_per_token(self) -> float:
        return float(self.times.sum() / self.tokens.sum())


def run_policy(policy, profile: Profile, sc: Scenario, seed: int, jitter: float = 0.1,
               fixed_lengths: np.ndarray | None = None) -> RunTrace:
    """One seed. `fixed_lengths` replays a given length per round (the oracle)."""
    rounds = len(sc.delays)
    rng = np.random.default_rng([seed, 11])
    u_accept = rng.random(rounds)
    u_jitter = rng.uniform(-1.0, 1.0, rounds)
    a_full = (profile.survival[None, :] > u_accept[:, None]).sum(axis=1)
    lengths = np.empty(rounds, dtype=np.int64)
    times = np.empty(rounds)
    tokens = np.empty(rounds)
    for r in range(rounds):
        ctx = RoundContext(float(sc.delays[r]), None if sc.states is None else int(sc.states[r]))
        L = int(fixed_lengths[r]) if fixed_lengths is not None else policy.choose(ctx)
        L = max(1, min(L, profile.max_length))
        a = int(min(a_full[r], L))
        t = float(profile.compute_ms[L - 1] * (1.0 + jitter * u_jitter[r]) + 2.0 * sc.delays[r])
        if policy is not None:
            policy.observe(RoundOutcome(L, a, t, ctx))
        lengths[r], times[r], tokens[r] = L, t, a + 1
    return RunTrace(lengths, times, tokens)


def regret_curve(trace: RunTrace, sc: Scenario, profile: Profile) -> np.ndarray:
    """Cumulative pseudo-regret: sum_r E[T(L_r)] - lambda*_r B(L_r) (no acceptance noise)."""
    b = expected_tokens(profile.survival)[trace.lengths - 1]
    t = profile.compute_ms[trace.lengths - 1] + 2.0 * sc.delays
    return np.cumsum(t - sc.oracle_lambda * b)


def loglog_slope(curve: np.ndarray, start: int = 50) -> float | None:
    """Slope of log regret vs log rounds over [start, n] (None where regret is not positive)."""
    n = np.arange(1, len(curve) + 1)
    keep = (n >= start) & (curve > 0)
    if keep.sum() < 10:
        return None
    return float(np.polyfit(np.log(n[keep]), np.log(curve[keep]), 1)[0])


def simulate(profile: Profile, policies: list[str], scenarios: list[Scenario], seeds: int,
             max_length: int | None = None, jitter: float = 0.1, checkpoints: int = 20) -> dict:
    k = min(max_length or profile.max_length, profile.max_length)
    profile = profile.truncated(k)
    out = {"profile": profile.name, "max_length": k, "seeds": seeds, "jitter": jitter, "scenarios": []}
    for sc in scenarios:
        rounds = len(sc.delays)
        marks = np.unique(np.geomspace(1, rounds, checkpoints).astype(int)) - 1
        oracle = [run_policy(None, profile, sc, s, jitter, sc.oracle_lengths) for s in range(seeds)]
        oracle_j = np.array([t.ms_per_token for t in oracle])
        entry = {"scenario": sc.kind, "label": sc.label, "rounds": rounds,
                 "oracle": {"ms_per_token": float(oracle_j.mean()),
                            "expected_ms_per_token": float(np.mean(sc.oracle_lambda)),
                            "lengths": sorted({int(x) for x in sc.oracle_lengths})},
                 "policies": {}, **sc.info}
        for spec in policies:
            traces = [run_policy(make_policy(spec, max_length=k, seed=s, profile=profile), profile, sc, s, jitter)
                      for s in range(seeds)]
            j = np.array([t.ms_per_token for t in traces])
            gaps = 100.0 * (j / oracle_j - 1.0)
            curves = np.mean([regret_curve(t, sc, profile) for t in traces], axis=0)
            hist = np.bincount(np.concatenate([t.lengths for t in traces]), minlength=k + 1)[1:]
            entry["policies"][spec] = {
                "ms_per_token": float(j.mean()),
                "gap_pct": float(gaps.mean()),
                "gap_pct_stderr": float(gaps.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0,
                "gap_pct_p90": float(np.percentile(gaps, 90)),
                "gap_pct_worst": float(gaps.max()),
                "regret_slope": loglog_slope(curves),
                "regret_curve": [[int(m) + 1, float(curves[m])] for m in marks],
                "length_share": [round(float(x), 4) for x in hist / hist.sum()],
            }
        out["scenarios"].append(entry)
    return out


def build_scenarios(profile: Profile, kind: str, delays: list[float], rounds: int, stay: float = 0.9,
                    seed: int = 0) -> list[Scenario]:
    if not delays:
        raise ControlError("simulate: --delays is empty")
    if any(d < 0 for d in delays):
        raise ControlError("simulate: delays must be >= 0")
    if rounds < 1:
        raise ControlError("simulate: rounds must be >= 1")
    if kind == "const":
        return [const_scenario(profile, d, rounds) for d in delays]
    if kind == "drift":
        return [drift_scenario(profile, delays, rounds)]
    if kind == "markov":
        return [markov_scenario(profile, delays, rounds, stay, seed)]
    raise ControlError(f"unknown scenario '{kind}' (known: {', '.join(SCENARIOS)})")
