"""Markov-modulated channel: the semi-Markov decision problem over draft lengths.

States s have one-way delays d(s) and a per-round transition matrix P. A round of
length L in state s costs T(L, s) = C(L) * scale(s) + 2 d(s) and yields B(L) tokens.
We find lambda* = min long-run ms/token by bisection on lambda: for each lambda,
relative value iteration solves h(s) = min_L {T(L,s) - lambda B(L) + sum P h} and its
gain g(lambda) is decreasing; lambda* is its root.

With purely additive delay (scale = 1) and per-round transitions, the continuation
does not depend on L, so the optimal L is the same in every state (the best fixed
length at the stationary mean delay) and the myopic per-state rule is worse.
State-dependence pays when the per-token cost depends on s (scale != 1).

Real links change in wall-clock time: the state holds for a dwell time and a
longer round sees more of the chain, so the transitions depend on the action,
P_L(s'|s) = expm(Q T(L, s)) for the generator Q (`clock_transitions`). Then the
continuation depends on L and, once dwell times are long against a round, the
optimum is the per-state best length: "one length for every state" is an
artefact of counting time in rounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from control.profile import Profile
from control.theory import best_length, expected_tokens
from control.types import ControlError


@dataclass(frozen=True)
class MarkovChannel:
    delays_ms: np.ndarray
    transitions: np.ndarray  # row-stochastic, per round
    compute_scale: np.ndarray | None = None

    def __post_init__(self):
        p = np.asarray(self.transitions, dtype=float)
        n = len(self.delays_ms)
        if p.shape != (n, n):
            raise ControlError(f"markov channel: transitions must be {n}x{n}, got {p.shape}")
        if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
            raise ControlError("markov channel: each transition row must be non-negative and sum to 1")
        if (np.asarray(self.delays_ms) < 0).any():
            raise ControlError("markov channel: delays must be >= 0")

    @property
    def n_states(self) -> int:
        return len(self.delays_ms)

    def scale(self) -> np.ndarray:
        return np.ones(self.n_states) if self.compute_scale is None else np.asarray(self.compute_scale, float)

    def stationary(self) -> np.ndarray:
        p = np.asarray(self.transitions, float)
        w, v = np.linalg.eig(p.T)
        pi = np.real(v[:, np.argmin(np.abs(w - 1.0))])
        return pi / pi.sum()


def round_costs(profile: Profile, channel: MarkovChannel) -> np.ndarray:
    """T[s, L-1]."""
    return channel.scale()[:, None] * profile.compute_ms[None, :] + 2.0 * np.asarray(channel.delays_ms)[:, None]


def evaluate_policy(profile: Profile, channel: MarkovChannel, lengths: list[int],
                    p_clock: np.ndarray | None = None) -> float:
    """Long-run ms/token of a stationary policy state -> L (ratio of expectations over the
    embedded chain of round starts)."""
    if p_clock is None:
        pi = channel.stationary()
    else:
        pi = MarkovChannel(channel.delays_ms, p_clock[np.arange(channel.n_states), np.asarray(lengths) - 1]).stationary()
    t = round_costs(profile, channel)
    b = expected_tokens(profile.survival)
    idx = np.asarray(lengths) - 1
    s = np.arange(channel.n_states)
    return float(pi @ t[s, idx] / (pi @ b[idx]))


def expm(a: np.ndarray) -> np.ndarray:
    """Matrix exponential of one or a batch [..., n, n] of small matrices (scaling and squaring a
    Taylor series; numpy only)."""
    a = np.asarray(a, float)
    norm = float(np.abs(a).sum(axis=-1).max()) if a.size else 0.0
    k = max(0, int(np.ceil(np.log2(norm))) + 1) if norm > 0.5 else 0
    x = a / 2.0 ** k
    eye = np.broadcast_to(np.eye(a.shape[-1]), a.shape)
    out, term = eye.copy(), eye.copy()
    for i in range(1, 18):
        term = term @ x / i
        out = out + term
    for _ in range(k):
        out = out @ out
    return out


def clock_policy_iteration(t: np.ndarray, b: np.ndarray, q: np.ndarray, start: np.ndarray | None = None,
                           iters: int = 20) -> tuple[float, np.ndarray]:
    """(lambda*, best length index per state) for round costs t[s, L] and tokens b[L] when the state
    evolves in wall-clock time with generator q (transitions expm(q t[s, L])): policy iteration,
    exact in a few steps for the handful of states a channel has. Starts from `start` (default: myopic)."""
    n, k = t.shape
    p = expm(q[None, None] * t[:, :, None, None])  # [s, L, s0, s'] -> keep row s0 = s
    p = p[np.arange(n), :, np.arange(n), :]         # [s, L, s']
    pol = np.argmin(t - (t[:, :1] / b[0]).min() * b[None, :], axis=1) if start is None else np.asarray(start)
    lam = 0.0
    for _ in range(iters):
        idx = np.arange(n)
        pp, tt, bb = p[idx, pol], t[idx, pol], b[pol]
        # h(s) + lam b(s) = t(s) + sum P h, with h(0) = 0: unknowns h(1..n-1), lam
        a = np.zeros((n, n))
        a[:, 0] = bb
        a[:, 1:] = (np.eye(n) - pp)[:, 1:]
        try:
            sol = np.linalg.solve(a, tt)
        except np.linalg.LinAlgError:
            break
        lam, h = float(sol[0]), np.concatenate([[0.0], sol[1:]])
        q_val = t - lam * b[None, :] + p @ h
        better = np.argmin(q_val, axis=1)
        keep = q_val[idx, pol] <= q_val[idx, better] + 1e-9 * max(1.0, abs(lam))
        new = np.where(keep, pol, better)
        if (new == pol).all():
            break
        pol = new
    return lam, pol


def generator(delays_ms, dwell_ms: float) -> np.ndarray:
    """Continuous-time generator: each state holds for an exponential time of mean `dwell_ms`,
    then jumps to another state uniformly."""
    n = len(delays_ms)
    if dwell_ms <= 0:
        raise ControlError(f"markov channel: dwell time must be > 0 ms, got {dwell_ms}")
    q = np.full((n, n), 0.0 if n == 1 else 1.0 / (dwell_ms * (n - 1)))
    np.fill_diagonal(q, 0.0)
    np.fill_diagonal(q, -q.sum(axis=1))
    return q


def clock_transitions(profile: Profile, channel: MarkovChannel, q: np.ndarray) -> np.ndarray:
    """P[s, L-1, s']: the state after a round of length L begun in s (the round's delay is that of s)."""
    t = round_costs(profile, channel)
    return np.array([[expm(q * t[s, li])[s] for li in range(t.shape[1])] for s in range(len(t))])


def _continuation(p: np.ndarray, h: np.ndarray) -> np.ndarray:
    """E[h(next state)] per (state, action): p is [S, S] (per round) or [S, L, S] (wall clock)."""
    return (p @ h)[:, None] if p.ndim == 2 else p @ h


def _rvi(cost: np.ndarray, p: np.ndarray, iters: int = 5000, tol: float = 1e-10) -> tuple[float, np.ndarray]:
    """Relative value iteration for an average-cost MDP (P per round, or per action)."""
    h = np.zeros(cost.shape[0])
    g = 0.0
    for _ in range(iters):
        q = cost + _continuation(p, h)
        new = q.min(axis=1)
        g = new[0]
        new = new - g
        if np.max(np.abs(new - h)) < tol:
            h = new
            break
        h = new
    return float(g), (cost + _continuation(p, h)).argmin(axis=1)


@dataclass(frozen=True)
class SmdpSolution:
    ms_per_token: float
    lengths: list[int]              # optimal length per state
    myopic_lengths: list[int]       # best_length(d(s)) per state
    myopic_ms_per_token: float
    best_fixed_length: int
    best_fixed_ms_per_token: float

    @property
    def state_dependence_pays(self) -> bool:
        return self.ms_per_token < self.best_fixed_ms_per_token * (1 - 1e-9)

    def to_dict(self) -> dict:
        return {**self.__dict__, "state_dependence_pays": self.state_dependence_pays}


def _bisect_rvi(t: np.ndarray, b: np.ndarray, p: np.ndarray, tol: float) -> np.ndarray:
    """Per-round chain: lambda* by bisection on the gain of relative value iteration."""
    lo, hi = 0.0, float(t.max() / b.min())
    lengths = None
    while hi - lo > tol * max(1.0, hi):
        lam = 0.5 * (lo + hi)
        g, arg = _rvi(t - lam * b[None, :], p)
        if g > 0:
            lo = lam
        else:
            hi, lengths = lam, arg
    return _rvi(t - hi * b[None, :], p)[1] if lengths is None else lengths


def solve_smdp(profile: Profile, channel: MarkovChannel, tol: float = 1e-9,
               q: np.ndarray | None = None) -> SmdpSolution:
    """Per-round transitions (`channel.transitions`), or wall-clock ones from the generator `q`."""
    t = round_costs(profile, channel)
    b = expected_tokens(profile.survival)
    p = np.asarray(channel.transitions, float) if q is None else clock_transitions(profile, channel, q)
    p_clock = None if q is None else p
    lengths = _bisect_rvi(t, b, p, tol) if q is None else clock_policy_iteration(t, b, q)[1]
    opt = [int(i) + 1 for i in lengths]
    myopic = [best_length(Profile(profile.name, profile.compute_ms * channel.scale()[s], profile.survival),
                          float(channel.delays_ms[s]))[0] for s in range(channel.n_states)]
    fixed = [(evaluate_policy(profile, channel, [L] * channel.n_states, p_clock), L)
             for L in range(1, profile.max_length + 1)]
    fixed_j, fixed_l = min(fixed)
    return SmdpSolution(evaluate_policy(profile, channel, opt, p_clock), opt, myopic,
                        evaluate_policy(profile, channel, myopic, p_clock), fixed_l, fixed_j)


def brute_force_optimum(profile: Profile, channel: MarkovChannel) -> tuple[float, list[int]]:
    """Enumerate every stationary deterministic policy (tests only: K**S of them)."""
    best = (np.inf, [])
    for combo in product(range(1, profile.max_length + 1), repeat=channel.n_states):
        j = evaluate_policy(profile, channel, list(combo))
        if j < best[0] - 1e-12:
            best = (j, list(combo))
    return best
