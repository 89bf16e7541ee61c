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


def evaluate_policy(profile: Profile, channel: MarkovChannel, lengths: list[int]) -> float:
    """Long-run ms/token of a stationary policy state -> L (ratio of expectations)."""
    pi = channel.stationary()
    t = round_costs(profile, channel)
    b = expected_tokens(profile.survival)
    idx = np.asarray(lengths) - 1
    s = np.arange(channel.n_states)
    return float(pi @ t[s, idx] / (pi @ b[idx]))


def _rvi(cost: np.ndarray, p: np.ndarray, iters: int = 5000, tol: float = 1e-10) -> tuple[float, np.ndarray]:
    """Relative value iteration for an average-cost MDP with action-independent P."""
    h = np.zeros(cost.shape[0])
    g = 0.0
    for _ in range(iters):
        q = cost + (p @ h)[:, None]
        new = q.min(axis=1)
        g = new[0]
        new = new - g
        if np.max(np.abs(new - h)) < tol:
            h = new
            break
        h = new
    return float(g), (cost + (p @ h)[:, None]).argmin(axis=1)


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


def solve_smdp(profile: Profile, channel: MarkovChannel, tol: float = 1e-9) -> SmdpSolution:
    t = round_costs(profile, channel)
    b = expected_tokens(profile.survival)
    p = np.asarray(channel.transitions, float)
    lo, hi = 0.0, float(t.max() / b.min())
    lengths = None
    while hi - lo > tol * max(1.0, hi):
        lam = 0.5 * (lo + hi)
        g, arg = _rvi(t - lam * b[None, :], p)
        if g > 0:
            lo = lam
        else:
            hi, lengths = lam, arg
    if lengths is None:
        lengths = _rvi(t - hi * b[None, :], p)[1]
    opt = [int(i) + 1 for i in lengths]
    myopic = [best_length(Profile(profile.name, profile.compute_ms * channel.scale()[s], profile.survival),
                          float(channel.delays_ms[s]))[0] for s in range(channel.n_states)]
    fixed = [(evaluate_policy(profile, channel, [L] * channel.n_states), L) for L in range(1, profile.max_length + 1)]
    fixed_j, fixed_l = min(fixed)
    return SmdpSolution(evaluate_policy(profile, channel, opt), opt, myopic,
                        evaluate_policy(profile, channel, myopic), fixed_l, fixed_j)


def brute_force_optimum(profile: Profile, channel: MarkovChannel) -> tuple[float, list[int]]:
    """Enumerate every stationary deterministic policy (tests only: K**S of them)."""
    best = (np.inf, [])
    for combo in product(range(1, profile.max_length + 1), repeat=channel.n_states):
        j = evaluate_policy(profile, channel, list(combo))
        if j < best[0] - 1e-12:
            best = (j, list(combo))
    return best
