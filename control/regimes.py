"""Acceptance that runs in streaks: a hidden regime (easy / hard text) that persists across rounds.

Each round's acceptance survival is that of the regime in force; the regime follows a Markov
chain per round and nobody observes it. What a policy can know is the belief P(regime | the
outcomes so far), so the correct oracle is the optimum of the belief MDP: after a round of
length L that accepted a tokens the belief is updated by Bayes and pushed through the chain,
and the oracle plays the length that minimises the long-run ms/token from that belief.
`solve_belief` finds it (two regimes: the belief is one number, solved on a grid by relative
value iteration inside a bisection on lambda, the Dinkelbach view of DESIGN.md section 2);
`BeliefOracle` replays it as a policy with the true model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from control.policies.base import Policy
from control.types import ControlError, RoundContext, RoundOutcome

GRID = 201


@dataclass(frozen=True)
class HiddenRegimes:
    """`survival[s]`: S(1..K) in regime s; `transitions[s, s']`: per-round switch probabilities."""

    survival: np.ndarray
    transitions: np.ndarray

    def __post_init__(self) -> None:
        if self.survival.ndim != 2 or self.transitions.shape != (len(self.survival),) * 2:
            raise ControlError("hidden regimes: survival must be R x K and transitions R x R")
        if len(self.survival) != 2:
            raise ControlError("hidden regimes: exactly two regimes (easy, hard) are supported")

    def stationary(self) -> np.ndarray:
        p = self.transitions
        a, b = p[0, 1], p[1, 0]
        return np.array([0.5, 0.5]) if a + b == 0 else np.array([b, a]) / (a + b)

    def mixture(self) -> np.ndarray:
        """The survival a round has when the regime is unknown (the stationary mixture)."""
        return self.stationary() @ self.survival

    def truncated(self, k: int) -> "HiddenRegimes":
        return HiddenRegimes(self.survival[:, :k], self.transitions)

    def outcome_probs(self, length: int) -> np.ndarray:
        """P(a accepted | regime, L) for a = 0..L: (R, L + 1)."""
        s = np.concatenate([np.ones((2, 1)), self.survival[:, :length]], axis=1)
        p = s[:, :-1] - s[:, 1:]
        return np.concatenate([p, s[:, -1:]], axis=1)

    def next_belief(self, belief_easy: np.ndarray, length: int, accepted: int) -> np.ndarray:
        """P(easy) in the next round after a round of `length` that accepted `accepted`, from P(easy) before it."""
        like = self.outcome_probs(length)[:, accepted]
        post = belief_easy * like[0]
        norm = post + (1.0 - belief_easy) * like[1]
        post = np.where(norm > 0, post / np.maximum(norm, 1e-300), belief_easy)
        return post * self.transitions[0, 0] + (1.0 - post) * self.transitions[1, 0]


def _interp(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.interp(x, np.linspace(0.0, 1.0, len(values)), values)


def solve_belief(compute_ms: np.ndarray, delay_ms: float, regimes: HiddenRegimes, grid: int = GRID,
                 tol: float = 1e-6) -> tuple[float, np.ndarray]:
    """(lambda*, best length 1..K at each of `grid` beliefs P(easy) in [0, 1]). The expected round time
    is compute + 2 x the mean delay; acceptance and the belief update come from the regimes."""
    k = len(compute_ms)
    b = np.linspace(0.0, 1.0, grid)
    cost = np.asarray(compute_ms, float) + 2.0 * delay_ms
    arms = []  # per length: P(a | belief) (grid, L + 1), tokens a + 1, the next belief's grid cell and weight
    for L in range(1, k + 1):
        po = regimes.outcome_probs(L)
        nxt = np.stack([regimes.next_belief(b, L, a) for a in range(L + 1)], axis=1) * (grid - 1)
        i0 = np.minimum(np.floor(nxt).astype(np.int64), grid - 2)
        arms.append((b[:, None] * po[0] + (1 - b[:, None]) * po[1], np.arange(1, L + 2, dtype=float),
                     i0, nxt - i0))
    h = np.zeros(grid)

    def average(lam: float) -> tuple[float, np.ndarray]:
        nonlocal h
        g = 0.0
        for _ in range(5000):
            q = np.stack([(p * (cost[i] - lam * tok + h[i0] * (1 - w) + h[i0 + 1] * w)).sum(axis=1)
                          for i, (p, tok, i0, w) in enumerate(arms)], axis=1)
            new = q.min(axis=1)
            g = float(new[-1])
            new = new - g
            done = np.max(np.abs(new - h)) < tol * max(1.0, abs(g))
            h = new
            if done:
                break
        return g, np.argmin(q, axis=1) + 1

    lo, hi = 0.0, float(cost.max())  # at least one token per round: lambda* <= the longest round's time
    for _ in range(36):
        mid = 0.5 * (lo + hi)
        g, _ = average(mid)
        lo, hi = (mid, hi) if g > 0 else (lo, mid)
    lam = 0.5 * (lo + hi)
    return lam, average(lam)[1]


class BeliefOracle(Policy):
    """The belief-MDP optimum replayed with the true model (the streaky scenarios' oracle)."""

    spec = "oracle-belief"
    learns = True

    def __init__(self, table: np.ndarray, regimes: HiddenRegimes):
        super().__init__(int(table.max()) if len(table) else 1)
        self.max_length = regimes.survival.shape[1]
        self.table, self.regimes = np.asarray(table), regimes
        self.belief = float(regimes.stationary()[0])

    def choose(self, ctx: RoundContext) -> int:
        return int(self.table[int(round(self.belief * (len(self.table) - 1)))])

    def observe(self, o: RoundOutcome) -> None:
        self.belief = float(self.regimes.next_belief(np.array(self.belief), o.length, min(o.accepted, o.length)))
