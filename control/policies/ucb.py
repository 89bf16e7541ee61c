"""Bandit baselines over draft lengths 1..K.

UCB-SpecStop (the seed paper's Algorithm 1): per arm S_T = sum round_ms,
S_A = sum (A + 1), n. Play each arm once, then argmin
    S_T/S_A - beta * R * sqrt(n log t) / S_A
with t the rounds so far and R the observed round-time range (ms). Scaling the
bonus by R puts beta on a unitless scale: the paper's beta = 1 with raw ms made
the bonus negligible (greedy). Default beta = 1.0 (bonus ~ one round-time range).

Naive UCB: UCB on the per-round ratio T/(A+1) — biased toward short drafts
(Jensen: E[T/(A+1)] != E[T]/E[A+1]).
"""
from __future__ import annotations

import math

import numpy as np

from control.policies.base import Policy
from control.types import RoundContext, RoundOutcome


class _ArmStats:
    def __init__(self, k: int):
        self.sum_t = np.zeros(k)
        self.sum_a = np.zeros(k)
        self.sum_r = np.zeros(k)  # per-round ratio T/(A+1), for naive UCB
        self.n = np.zeros(k, dtype=np.int64)
        self.t_min = math.inf
        self.t_max = -math.inf
        self.r_min = math.inf
        self.r_max = -math.inf

    def add(self, o: RoundOutcome) -> None:
        i = o.length - 1
        if not 0 <= i < len(self.n):
            return
        ratio = o.round_ms / o.tokens
        self.sum_t[i] += o.round_ms
        self.sum_a[i] += o.tokens
        self.sum_r[i] += ratio
        self.n[i] += 1
        self.t_min, self.t_max = min(self.t_min, o.round_ms), max(self.t_max, o.round_ms)
        self.r_min, self.r_max = min(self.r_min, ratio), max(self.r_max, ratio)

    def to_dict(self) -> dict:
        return {"sum_t": self.sum_t.tolist(), "sum_a": self.sum_a.tolist(), "sum_r": self.sum_r.tolist(),
                "n": self.n.tolist(), "range": [_f(self.t_min), _f(self.t_max), _f(self.r_min), _f(self.r_max)]}

    @classmethod
    def from_dict(cls, d: dict, k: int) -> "_ArmStats":
        s = cls(k)
        s.sum_t, s.sum_a, s.sum_r = (np.asarray(d[f], float) for f in ("sum_t", "sum_a", "sum_r"))
        s.n = np.asarray(d["n"], np.int64)
        if not (len(s.sum_t) == len(s.sum_a) == len(s.sum_r) == len(s.n) == k):
            raise ValueError("arm statistics have the wrong length")
        s.t_min, s.t_max, s.r_min, s.r_max = (_unf(x) for x in d["range"])
        return s


def _f(x: float) -> float | None:
    return None if math.isinf(x) else x


def _unf(x) -> float:
    return math.inf if x is None else float(x)


def _ucb_index(stats: _ArmStats, beta: float, naive: bool) -> int:
    untried = np.flatnonzero(stats.n == 0)
    if len(untried):
        return int(untried[0]) + 1
    t = stats.n.sum()
    if naive:
        mean = stats.sum_r / stats.n
        bonus = beta * (stats.r_max - stats.r_min) * np.sqrt(np.log(t) / stats.n)
    else:
        mean = stats.sum_t / stats.sum_a
        bonus = beta * (stats.t_max - stats.t_min) * np.sqrt(stats.n * np.log(t)) / stats.sum_a
    return int(np.argmin(mean - bonus)) + 1


class UcbSpecStop(Policy):
    def __init__(self, max_length: int, beta: float = 1.0, naive: bool = False):
        super().__init__(max_length)
        self.beta = beta
        self.naive = naive
        self.spec = ("naive-ucb" if naive else "ucb-specstop") + ("" if beta == 1.0 else f":{beta:g}")
        self.stats = _ArmStats(max_length)

    def choose(self, ctx: RoundContext) -> int:
        return _ucb_index(self.stats, self.beta, self.naive)

    def observe(self, outcome: RoundOutcome) -> None:
        self.stats.add(outcome)

    def state(self) -> dict:
        return self.stats.to_dict()

    def load_state(self, state: dict) -> None:
        self.stats = _ArmStats.from_dict(state, self.max_length)


class ContextualUcbSpecStop(Policy):
    """UCB-SpecStop with separate statistics per channel state."""

    def __init__(self, max_length: int, beta: float = 1.0):
        super().__init__(max_length)
        self.beta = beta
        self.spec = "ucb-specstop-ctx" + ("" if beta == 1.0 else f":{beta:g}")
        self.per_state: dict[str, _ArmStats] = {}

    def _stats(self, ctx: RoundContext) -> _ArmStats:
        key = str(ctx.channel_state)
        if key not in self.per_state:
            self.per_state[key] = _ArmStats(self.max_length)
        return self.per_state[key]

    def choose(self, ctx: RoundContext) -> int:
        return _ucb_index(self.per_state.get(str(ctx.channel_state)) or _ArmStats(self.max_length), self.beta, False)

    def observe(self, outcome: RoundOutcome) -> None:
        self._stats(outcome.context).add(outcome)

    def state(self) -> dict:
        return {k: v.to_dict() for k, v in self.per_state.items()}

    def load_state(self, state: dict) -> None:
        self.per_state = {str(k): _ArmStats.from_dict(v, self.max_length) for k, v in state.items()}
