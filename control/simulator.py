"""Offline simulator: policies against a profile under a delay scenario.

Round model: A = min(A_full, L) with A_full drawn from the profile's survival;
round time = C(L) * (1 + jitter * U[-1, 1]) + 2 d. Policies are compared on
common random numbers: round r of seed s uses the same uniforms for every policy
(in wall-clock scenarios, the k-th round of each segment: _RoundNumbers).
ms/token is total time / total tokens over all rounds, exploration included; the expected gap
compares the same runs at each chosen length's expected time and tokens (expected_ms_per_token).
Regret after n rounds is the pseudo-regret sum_r (E[T(L_r)] - lambda* B(L_r)),
lambda* the oracle's long-run ms/token for the delay in force (zero for the oracle).

Scenarios and their oracles (each the optimum of the objective it is judged on):
  const          one delay; the best fixed length.
  drift          the delay steps through phases of equal WALL-CLOCK time, as a real
                 link does; each phase's time is fixed, so the per-phase best length
                 maximises the tokens in it: the oracle follows the phases.
  markov         a channel whose state holds for an exponential dwell time (wall
                 clock); the oracle solves the semi-Markov problem with the action-
                 dependent transitions expm(Q T(L, s)) (control/markov.py).
  drift-rounds   the paper's variant: phases of equal numbers of ROUNDS. With additive
                 delay and a ratio of sums over rounds, the single best fixed length
                 (the best length at the mean delay) is optimal, and that is its oracle.
  markov-rounds  the paper's variant: per-round transitions; SMDP oracle (one length
                 for every state under additive delay).
  jitter         each round's delay is the given median times lognormal jitter with rare
                 5x spikes; the policy is told the median of the last five realized delays
                 (the edge's rule) and the round pays its own; oracle: the best fixed length
                 at the mean delay.
  streaky        acceptance in a hidden easy/hard regime that persists across rounds
                 (Profile.regimes, generated families only); oracle: the belief-MDP optimum
                 (control.regimes).
Every outcome carries the round's measured compute (what the nodes time), as live.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from control.markov import MarkovChannel, generator, solve_smdp
from control.policies import make_policy
from control.profile import Profile
from control.regimes import BeliefOracle, HiddenRegimes, solve_belief
from control.theory import best_length, expected_tokens
from control.token_signal import TokenSignal
from control.types import ControlError, RoundContext, RoundOutcome

SCENARIOS = ("const", "drift", "markov", "drift-rounds", "markov-rounds", "jitter", "streaky")
TOLD_WINDOW = 5  # the edge tells a policy the median of its last five measured delays (nodes/protocol/timing.py)


@dataclass(frozen=True)
class DelayJitter:
    """Each round's one-way delay: the median times a lognormal factor (sigma), and with probability
    `spike_p` `spike_x` times that (a queue or a retransmission). The policy is told the median of the
    last five realized delays, as the edge does; the round pays its own."""

    sigma: float = 0.35
    spike_p: float = 0.02
    spike_x: float = 5.0

    @property
    def mean_factor(self) -> float:
        return float(np.exp(self.sigma ** 2 / 2.0) * (1.0 + self.spike_p * (self.spike_x - 1.0)))

    def factors(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        return np.exp(self.sigma * z) * np.where(u < self.spike_p, self.spike_x, 1.0)


@dataclass(frozen=True)
class Scenario:
    """One delay process, as segments: `delays[i]`, `states[i]`, and the optimum in force
    (`oracle_lengths[i]`, `oracle_lambda[i]`). Per-round scenarios have one segment per round;
    wall-clock ones (`clock` set) have segment i from `clock[i]` ms until the next, and run
    until `horizon_ms` of simulated time."""

    kind: str
    label: str
    delays: np.ndarray
    states: np.ndarray | None
    oracle_lengths: np.ndarray
    oracle_lambda: np.ndarray
    info: dict = field(default_factory=dict)
    clock: np.ndarray | None = None
    horizon_ms: float = 0.0
    jitter: DelayJitter | None = None     # per-round delay noise: `delays` are then its medians
    regimes: HiddenRegimes | None = None  # acceptance in a hidden per-round regime (streaks)
    oracle_table: np.ndarray | None = None  # the belief-MDP oracle's length per belief (with `regimes`)

    def oracle_policy(self):
        """A policy that replays the oracle where it must learn from outcomes (hidden regimes), else None."""
        return None if self.oracle_table is None else BeliefOracle(self.oracle_table, self.regimes)

    def segment(self, r: int, elapsed_ms: float) -> int:
        return r if self.clock is None else int(np.searchsorted(self.clock, elapsed_ms, side="right")) - 1

    def done(self, r: int, elapsed_ms: float) -> bool:
        return r >= len(self.delays) if self.clock is None else elapsed_ms >= self.horizon_ms


def const_scenario(profile: Profile, delay: float, rounds: int) -> Scenario:
    L, lam = best_length(profile, delay)
    return Scenario("const", f"const {delay:g} ms", np.full(rounds, float(delay)), None,
                    np.full(rounds, L), np.full(rounds, lam))


def jitter_scenario(profile: Profile, median_ms: float, rounds: int, jitter: DelayJitter | None = None) -> Scenario:
    """A constant link whose delay jitters per round; oracle: the best fixed length at the MEAN delay
    (the round pays the realized delay, independent of the length: ratio of sums)."""
    jit = jitter or DelayJitter()
    mean = median_ms * jit.mean_factor
    L, lam = best_length(profile, mean)
    return Scenario("jitter", f"jitter {median_ms:g} ms (mean {mean:.3g})", np.full(rounds, float(median_ms)), None,
                    np.full(rounds, L), np.full(rounds, lam), {"mean_delay_ms": mean}, jitter=jit)


def streaky_scenario(profile: Profile, regimes: HiddenRegimes, delay: float, rounds: int) -> Scenario:
    """A constant delay, acceptance in a hidden easy/hard regime; oracle: the belief-MDP optimum
    (control.regimes), the best any policy can do from the outcomes it sees, given the true model."""
    k = profile.max_length
    reg = regimes.truncated(k)
    lam, table = solve_belief(profile.compute_ms, delay, reg)
    fixed, fixed_lam = best_length(Profile(profile.name, profile.compute_ms, reg.mixture()), delay)
    return Scenario("streaky", f"streaky {delay:g} ms", np.full(rounds, float(delay)), None,
                    np.full(rounds, fixed), np.full(rounds, lam),
                    {"best_fixed": fixed, "best_fixed_ms_per_token": fixed_lam}, regimes=reg, oracle_table=table)


def oracle_round_ms(profile: Profile, delay: float) -> float:
    """Expected round time of the best length at `delay` (sizes wall-clock horizons in rounds)."""
    L, _ = best_length(profile, delay)
    return float(profile.compute_ms[L - 1] + 2.0 * delay)


def drift_scenario(profile: Profile, delays: list[float], rounds: int) -> Scenario:
    """Phases of equal wall-clock time through `delays`, the whole about `rounds` oracle rounds."""
    phase_ms = rounds * float(np.mean([oracle_round_ms(profile, d) for d in delays])) / len(delays)
    best = [best_length(profile, x) for x in delays]
    return Scenario("drift", "drift " + " -> ".join(f"{x:g}" for x in delays) + f" ({phase_ms / 1e3:.3g} s each)",
                    np.asarray(delays, float), None, np.array([b[0] for b in best]), np.array([b[1] for b in best]),
                    {"phase_ms": phase_ms}, clock=np.arange(len(delays)) * phase_ms,
                    horizon_ms=phase_ms * len(delays))


def drift_rounds_scenario(profile: Profile, delays: list[float], rounds: int) -> Scenario:
    """Phases of equal numbers of rounds (the paper's); oracle: the best fixed length at the mean delay."""
    phase = np.minimum(np.arange(rounds) * len(delays) // rounds, len(delays) - 1)
    d = np.asarray(delays, float)[phase]
    L, _ = best_length(profile, float(d.mean()))
    lam = float((profile.compute_ms[L - 1] + 2.0 * d.mean()) / expected_tokens(profile.survival)[L - 1])
    return Scenario("drift-rounds", "drift-rounds " + " -> ".join(f"{x:g}" for x in delays), d, None,
                    np.full(rounds, L), np.full(rounds, lam))


def markov_transitions(n: int, stay: float) -> np.ndarray:
    if not 0.0 <= stay <= 1.0:
        raise ControlError(f"markov stay probability must be in [0, 1], got {stay}")
    if n == 1:
        return np.ones((1, 1))
    p = np.full((n, n), (1.0 - stay) / (n - 1))
    np.fill_diagonal(p, stay)
    return p


def _walk(p: np.ndarray, start: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    s = np.empty(steps, dtype=np.int64)
    s[0] = start
    cum = np.cumsum(p, axis=1)
    u = rng.random(steps)
    for r in range(1, steps):
        s[r] = min(int(np.searchsorted(cum[s[r - 1]], u[r])), len(p) - 1)
    return s


def markov_rounds_scenario(profile: Profile, delays: list[float], rounds: int, stay: float, seed: int) -> Scenario:
    chan = MarkovChannel(np.asarray(delays, float), markov_transitions(len(delays), stay))
    sol = solve_smdp(profile, chan)
    rng = np.random.default_rng([seed, 7])
    s = _walk(chan.transitions, int(rng.choice(len(delays), p=chan.stationary())), rounds, rng)
    return Scenario("markov-rounds", f"markov-rounds {','.join(f'{x:g}' for x in delays)} stay {stay:g}",
                    chan.delays_ms[s], s, np.asarray(sol.lengths)[s], np.full(rounds, sol.ms_per_token),
                    {"smdp": sol.to_dict()})


def markov_scenario(profile: Profile, delays: list[float], rounds: int, dwell_ms: float | None, seed: int,
                    stay: float = 0.9) -> Scenario:
    """Exponential dwell times in wall-clock ms (default: an oracle round at the mean delay / (1 - stay),
    the dwell the per-round chain would have), about `rounds` oracle rounds in all."""
    d = np.asarray(delays, float)
    if dwell_ms is None:
        if stay >= 1.0:
            raise ControlError("markov: stay must be < 1 for a wall-clock dwell (or give --dwell-ms)")
        dwell_ms = oracle_round_ms(profile, float(d.mean())) / (1.0 - stay)
    q = generator(d, dwell_ms)
    chan = MarkovChannel(d, markov_transitions(len(d), 0.0 if len(d) > 1 else 1.0))
    sol = solve_smdp(profile, chan, q=q)
    horizon = rounds * float(np.mean([oracle_round_ms(profile, x) for x in d]))
    rng = np.random.default_rng([seed, 7])
    starts, states, t, s = [], [], 0.0, int(rng.integers(len(d)))
    while t < horizon:
        starts.append(t)
        states.append(s)
        t += rng.exponential(dwell_ms)
        s = s if len(d) == 1 else int(rng.choice([x for x in range(len(d)) if x != s]))
    st = np.asarray(states, dtype=np.int64)
    return Scenario("markov", f"markov {','.join(f'{x:g}' for x in d)} dwell {dwell_ms / 1e3:.3g} s", d[st], st,
                    np.asarray(sol.lengths)[st], np.full(len(st), sol.ms_per_token),
                    {"smdp": sol.to_dict(), "dwell_ms": dwell_ms}, clock=np.asarray(starts), horizon_ms=horizon)


@dataclass
class RunTrace:
    lengths: np.ndarray
    times: np.ndarray
    tokens: np.ndarray
    segments: np.ndarray  # the scenario segment in force at each round
    regimes: np.ndarray | None = None  # the hidden acceptance regime of each round (streaky scenarios)

    @property
    def ms_per_token(self) -> float:
        return float(self.times.sum() / self.tokens.sum())


def _max_rounds(profile: Profile, sc: Scenario, jitter: float) -> int:
    if sc.clock is None:
        return len(sc.delays)
    shortest = float(profile.compute_ms.min()) * (1.0 - jitter) + 2.0 * float(sc.delays.min())
    return int(sc.horizon_ms / max(shortest, 1e-3)) + 2


class _RoundNumbers:
    """The uniforms of a seed's rounds, shared by every policy (common random numbers). Per-round
    scenarios key them by round index. Wall-clock ones key them by (segment, k-th round in it):
    runs that play different lengths fall out of step by round index, and pairing round r of one
    with round r of another would pair rounds in different channel states; the k-th round of a
    segment faces the same channel in every run (const scenarios have one segment: the same keys)."""

    def __init__(self, profile: Profile, sc: Scenario, seed: int, jitter: float, cap: int):
        self.survival, self.seed = profile.survival, seed
        self.delay_jitter, self.regimes = sc.jitter, sc.regimes
        self.by_segment = sc.clock is not None and len(sc.clock) > 1
        shortest = float(profile.compute_ms.min()) * (1.0 - jitter) + 2.0 * float(sc.delays.min())
        self.per_segment_cap = cap
        if self.by_segment:
            ends = np.append(sc.clock[1:], sc.horizon_ms)
            self.per_segment_cap = int((ends - sc.clock).max() / max(shortest, 1e-3)) + 2
        self.blocks: dict[int, tuple[np.ndarray, ...]] = {}
        self.played: dict[int, int] = {}

    def _block(self, key: int) -> tuple[np.ndarray, ...]:
        if key not in self.blocks:
            rng = np.random.default_rng([self.seed, 11] if key < 0 else [self.seed, 11, key])
            n = self.per_segment_cap
            u_accept, u_jitter = rng.random(n), rng.uniform(-1.0, 1.0, n)
            extra = np.random.default_rng([self.seed, 13] if key < 0 else [self.seed, 13, key])  # the older
            factor, regime = np.ones(n), np.zeros(n, dtype=np.int64)  # streams draw exactly as before
            if self.delay_jitter is not None:
                factor = self.delay_jitter.factors(extra.standard_normal(n), extra.random(n))
            if self.regimes is not None:
                p = self.regimes.transitions
                regime = _walk(p, int(extra.random() >= self.regimes.stationary()[0]), n, extra)
                a_full = (self.regimes.survival[regime] > u_accept[:, None]).sum(axis=1)
            else:
                a_full = (self.survival[None, :] > u_accept[:, None]).sum(axis=1)
            self.blocks[key] = (a_full, u_jitter, factor, regime)
        return self.blocks[key]

    def draw(self, r: int, segment: int) -> tuple[int, float, float, int]:
        """(full acceptance length, jitter uniform, delay factor, hidden regime) of round r, played in `segment`."""
        if self.by_segment:
            k = self.played.get(segment, 0)
            self.played[segment] = k + 1
            block = self._block(segment)
        else:
            k, block = r, self._block(-1)
        a_full, u_jitter, factor, regime = block
        return int(a_full[k]), float(u_jitter[k]), float(factor[k]), int(regime[k])


CALIBRATION_STREAM = 7919  # the calibration's own random stream (never the rounds' common numbers)


def calibrate_policy(policy, profile: Profile, seed: int, jitter: float, rounds: int) -> None:
    """A start-up calibration (`edge --calibrate-rounds`): `rounds` timed rounds of every length, each
    at the length's compute with the rounds' jitter, given to `policy.calibrate` before round 1. Their
    time is the worker's start-up, not a request's, so no run counts it."""
    rng = np.random.default_rng([int(seed) & 0x7FFF_FFFF, CALIBRATION_STREAM])
    for _ in range(rounds):
        for L in range(1, profile.max_length + 1):
            policy.calibrate(L, float(profile.compute_ms[L - 1] * (1.0 + jitter * rng.uniform(-1.0, 1.0))))


def run_policy(policy, profile: Profile, sc: Scenario, seed: int, jitter: float = 0.1,
               fixed_lengths: np.ndarray | None = None, signal: TokenSignal | None = None,
               calibration: int = 0) -> RunTrace:
    """One seed. `fixed_lengths` replays a given length per segment (the oracle). The policy is told
    the scenario's delay (under delay jitter: the median of the last five realized ones) and learns
    from the round's time, its measured compute (what the nodes time: the compute alone) and the
    context it was told. With a per-token `signal` (control.token_signal) every round's tokens are
    drawn one by one, and a policy with a stop rule drafts up to the length it chose, stopping after
    any token its rule says to (on a copy of itself per round, as the edge's StopRule does). With
    `calibration` > 0 the policy first gets that many calibration rounds per length (calibrate_policy)."""
    if signal is not None and sc.regimes is not None:
        raise ControlError("a per-token signal is not modelled under hidden acceptance regimes")
    if policy is not None and calibration > 0:
        calibrate_policy(policy, profile, seed, jitter, calibration)
    cap = _max_rounds(profile, sc, jitter)
    numbers = _RoundNumbers(profile, sc, seed, jitter, cap)
    lengths, times, tokens, segs, regimes = (np.empty(cap, dtype=np.int64), np.empty(cap), np.empty(cap),
                                             np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64))
    told_window: list[float] = []
    r, elapsed = 0, 0.0
    while r < cap and not sc.done(r, elapsed):
        i = sc.segment(r, elapsed)
        a_full, u_jitter, factor, regime = numbers.draw(r, i)
        delay = float(sc.delays[i])
        told = delay
        if sc.jitter is not None:
            told = float(np.median(told_window)) if told_window else 0.0
            delay *= factor
            told_window = (told_window + [delay])[-TOLD_WINDOW:]
        stops = signal is not None and policy is not None and getattr(policy, "stop_signal", None) is not None
        ctx = RoundContext(told, None if sc.states is None else int(sc.states[i]), stops)
        L = int(fixed_lengths[i]) if fixed_lengths is not None else policy.choose(ctx)
        L = max(1, min(L, profile.max_length))
        if signal is not None:
            tokens_r = signal.draws(profile.survival, seed, r)
            if stops:
                L = _stopped_length(copy.copy(policy), ctx, tokens_r.signal, L)
            a_full = tokens_r.accepted_of(profile.max_length)
        a = int(min(a_full, L))
        compute = float(profile.compute_ms[L - 1] * (1.0 + jitter * u_jitter))
        t = compute + 2.0 * delay
        if policy is not None:
            policy.observe(RoundOutcome(L, a, t, ctx, measured_compute_ms=compute))
        lengths[r], times[r], tokens[r], segs[r], regimes[r] = L, t, a + 1, i, regime
        r += 1
        elapsed += t
    return RunTrace(lengths[:r], times[:r], tokens[:r], segs[:r], regimes[:r])


def _stopped_length(rule, ctx: RoundContext, signal: np.ndarray, cap: int) -> int:
    """Tokens drafted of a round capped at `cap` whose stop rule reads `signal` after each token (never
    after the last: the cap ends the round anyway)."""
    for n in range(1, cap):
        if rule.should_stop(ctx, n, float(signal[n - 1])):
            return n
    return cap


def expected_ms_per_token(trace: RunTrace, sc: Scenario, profile: Profile) -> float:
    """sum_r E[T(L_r)] / sum_r B(L_r): the ms/token of the lengths a run chose, each round at its
    expected time and tokens. Two runs on the same seed then differ by their choices alone: the
    realized ms/token also carries which rounds happened to accept more, which no policy controls
    (fixed lengths 0.6-2.3 % off the optimum show realized gaps from -0.2 to +3.7 % over 20 seeds)."""
    t, b = _expected_rounds(trace, sc, profile)
    return float(t.sum() / b.sum())


def _expected_rounds(trace: RunTrace, sc: Scenario, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Each round's expected time E[T(L_r)] and tokens B(L_r) at the length it played."""
    if sc.regimes is not None:
        b = (1.0 + np.cumsum(sc.regimes.survival, axis=1))[trace.regimes, trace.lengths - 1]
    else:
        b = expected_tokens(profile.survival)[trace.lengths - 1]
    mean_factor = 1.0 if sc.jitter is None else sc.jitter.mean_factor
    t = profile.compute_ms[trace.lengths - 1] + 2.0 * mean_factor * sc.delays[trace.segments]
    return t, b


def regret_curve(trace: RunTrace, sc: Scenario, profile: Profile) -> np.ndarray:
    """Cumulative pseudo-regret: sum_r E[T(L_r)] - lambda*_r B(L_r) (no acceptance noise)."""
    t, b = _expected_rounds(trace, sc, profile)
    return np.cumsum(t - sc.oracle_lambda[trace.segments] * b)


def loglog_slope(curve: np.ndarray, start: int = 50) -> float | None:
    """Slope of log regret vs log rounds over [start, n] (None where regret is not positive)."""
    n = np.arange(1, len(curve) + 1)
    keep = (n >= start) & (curve > 0)
    if keep.sum() < 10:
        return None
    return float(np.polyfit(np.log(n[keep]), np.log(curve[keep]), 1)[0])


def _seed_trace(job: tuple) -> RunTrace:
    """One seed of one cell (a process pool's unit of work): `spec` None is the scenario's oracle."""
    spec, profile, sc, seed, jitter, calibration = job
    if spec is None:
        return run_policy(sc.oracle_policy(), profile, sc, seed, jitter,
                          None if sc.oracle_table is not None else sc.oracle_lengths)
    policy = make_policy(spec, max_length=profile.max_length, seed=seed, profile=profile)
    return run_policy(policy, profile, sc, seed, jitter, calibration=calibration)


def simulate(profile: Profile, policies: list[str], scenarios: list[Scenario], seeds: int,
             max_length: int | None = None, jitter: float = 0.1, checkpoints: int = 20,
             progress: Callable[[str], None] | None = None, calibration: int = 0, workers: int = 1) -> dict:
    """Every policy (and the scenario's oracle) over `seeds` seeds per scenario; `progress(label)` is
    called after each scenario x policy cell (the CLI draws its bar from it). `calibration`: start-up
    calibration rounds per length given to every policy first (only those that model compute use them).
    `workers` > 1 runs a cell's seeds in that many processes: each seed is its own random stream, so
    the result is the same as with one."""
    if workers < 1:
        raise ControlError("simulate: workers must be >= 1")
    k = min(max_length or profile.max_length, profile.max_length)
    profile = profile.truncated(k)
    out = {"profile": profile.name, "max_length": k, "seeds": seeds, "jitter": jitter, "calibration": calibration,
           "scenarios": []}
    pool = ProcessPoolExecutor(workers) if workers > 1 and seeds > 1 else None
    try:
        for sc in scenarios:
            out["scenarios"].append(_simulate_scenario(profile, policies, sc, seeds, jitter, checkpoints, progress,
                                                       calibration, map if pool is None else pool.map))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out


def _simulate_scenario(profile: Profile, policies: list[str], sc: Scenario, seeds: int, jitter: float,
                       checkpoints: int, progress: Callable[[str], None] | None, calibration: int,
                       mapper: Callable) -> dict:
    """One scenario's entry: its oracle and every policy, each over `seeds` seeds run through `mapper`."""
    k = profile.max_length
    oracle = list(mapper(_seed_trace, [(None, profile, sc, s, jitter, calibration) for s in range(seeds)]))
    rounds = int(np.median([len(t.lengths) for t in oracle]))
    oracle_j = np.array([t.ms_per_token for t in oracle])
    oracle_e = np.array([expected_ms_per_token(t, sc, profile) for t in oracle])
    entry = {"scenario": sc.kind, "label": sc.label, "rounds": rounds,
             "oracle": {"ms_per_token": float(oracle_j.mean()),
                        "expected_ms_per_token": float(np.mean(sc.oracle_lambda)),
                        "lengths": sorted({int(x) for x in sc.oracle_lengths})},
             "policies": {}, **sc.info}
    for spec in policies:
        traces = list(mapper(_seed_trace, [(spec, profile, sc, s, jitter, calibration) for s in range(seeds)]))
        if progress is not None:
            progress(f"{sc.label}: {spec}")
        j = np.array([t.ms_per_token for t in traces])
        gaps = 100.0 * (j / oracle_j - 1.0)
        expected = 100.0 * (np.array([expected_ms_per_token(t, sc, profile) for t in traces]) / oracle_e - 1.0)
        n = min(len(t.lengths) for t in traces)  # wall-clock scenarios: policies play different numbers
        curves = np.mean([regret_curve(t, sc, profile)[:n] for t in traces], axis=0)
        marks = np.unique(np.geomspace(1, n, checkpoints).astype(int)) - 1
        hist = np.bincount(np.concatenate([t.lengths for t in traces]), minlength=k + 1)[1:]
        entry["policies"][spec] = {
            "ms_per_token": float(j.mean()),
            "gap_pct": float(gaps.mean()),
            "gap_pct_stderr": float(gaps.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0,
            "gap_pct_p90": float(np.percentile(gaps, 90)),
            "gap_pct_worst": float(gaps.max()),
            "expected_gap_pct": float(expected.mean()),
            "expected_gap_pct_p90": float(np.percentile(expected, 90)),
            "expected_gap_pct_worst": float(expected.max()),
            # per seed, in seed order: seeds are paired across policies, so two rows compare seed by seed
            "gap_pct_seeds": [round(float(x), 4) for x in gaps],
            "expected_gap_pct_seeds": [round(float(x), 4) for x in expected],
            "regret_slope": loglog_slope(curves),
            "regret_curve": [[int(m) + 1, float(curves[m])] for m in marks],
            "length_share": [round(float(x), 4) for x in hist / hist.sum()],
        }
    return entry


def build_scenarios(profile: Profile, kind: str, delays: list[float], rounds: int, stay: float = 0.9,
                    seed: int = 0, dwell_ms: float | None = None) -> list[Scenario]:
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
    if kind == "drift-rounds":
        return [drift_rounds_scenario(profile, delays, rounds)]
    if kind == "markov":
        if dwell_ms is not None and dwell_ms <= 0:
            raise ControlError("simulate: --dwell-ms must be > 0")
        return [markov_scenario(profile, delays, rounds, dwell_ms, seed, stay)]
    if kind == "markov-rounds":
        return [markov_rounds_scenario(profile, delays, rounds, stay, seed)]
    if kind == "jitter":
        return [jitter_scenario(profile, d, rounds) for d in delays]
    if kind == "streaky":
        if profile.regimes is None:
            raise ControlError("simulate: scenario 'streaky' needs a profile with hidden acceptance regimes "
                               "(generated ones: specstop bench policies --kinds streaky)")
        return [streaky_scenario(profile, profile.regimes, d, rounds) for d in delays]
    raise ControlError(f"unknown scenario '{kind}' (known: {', '.join(SCENARIOS)})")
