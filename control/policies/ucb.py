"""Bandit baselines over draft lengths 1..K.

UCB-SpecStop (the seed paper's Algorithm 1), as the paper runs it: per arm
S_T = sum round_ms, S_A = sum (A + 1), n. Play each arm once, then argmin
    S_T/S_A - beta * sqrt(n log t) / S_A
with t the rounds so far and beta = 1 on raw milliseconds (the published rule:
the bonus is small next to ms/token values, so it is nearly greedy).
`ucb-specstop-scaled` multiplies the bonus by R, the observed round-time range
(ms), which puts beta on a unitless scale; it explores far more.

Naive UCB: UCB on the per-round ratio T/(A+1), mean - beta * sqrt(log t / n)
(raw ms, as published; `naive-ucb-scaled` scales by the ratio's range) —
biased toward short drafts (Jensen: E[T/(A+1)] != E[T]/E[A+1]).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from control.policies import checks
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
    def from_dict(cls, d: Any, k: int, where: str = "state") -> "_ArmStats":
        """Range-checked: every arm played n times has S_A >= n tokens (each round yields >= 1)."""
        d = checks.table(d, where, 5)
        s = cls(k)
        s.sum_t, s.sum_a, s.sum_r = (checks.array(checks.field(d, f), f"{where}.{f}", k) for f in ("sum_t", "sum_a", "sum_r"))
        n = checks.array(checks.field(d, "n"), f"{where}.n", k)
        if (n != np.round(n)).any() or (s.sum_a < n).any():
            raise checks.ControlError(f"snapshot: '{where}.n' must be whole counts with sum_a >= n")
        s.n = n.astype(np.int64)
        rng = checks.field(d, "range")
        if not isinstance(rng, (list, tuple)) or len(rng) != 4:
            raise checks.ControlError(f"snapshot: '{where}.range' must be 4 numbers or nulls")
        s.t_min, s.t_max, s.r_min, s.r_max = (
            (math.inf if i % 2 == 0 else -math.inf) if x is None else checks.number(x, f"{where}.range", 0.0)
            for i, x in enumerate(rng))
        if s.n.any() and (math.isinf(s.t_min) or math.isinf(s.r_min)):
            raise checks.ControlError(f"snapshot: '{where}.range' is missing for arms already played")
        return s


def _f(x: float) -> float | None:
    return None if math.isinf(x) else x


def _ucb_index(stats: _ArmStats, beta: float, naive: bool, scaled: bool) -> int:
    untried = np.flatnonzero(stats.n == 0)
    if len(untried):
        return int(untried[0]) + 1
    t = stats.n.sum()
    if naive:
        mean = stats.sum_r / stats.n
        scale = (stats.r_max - stats.r_min) if scaled else 1.0
        bonus = beta * scale * np.sqrt(np.log(t) / stats.n)
    else:
        mean = stats.sum_t / stats.sum_a
        scale = (stats.t_max - stats.t_min) if scaled else 1.0
        bonus = beta * scale * np.sqrt(stats.n * np.log(t)) / stats.sum_a
    return int(np.argmin(mean - bonus)) + 1


class UcbSpecStop(Policy):
    def __init__(self, max_length: int, beta: float = 1.0, naive: bool = False, scaled: bool = False):
        super().__init__(max_length)
        self.beta, self.naive, self.scaled = beta, naive, scaled
        name = ("naive-ucb" if naive else "ucb-specstop") + ("-scaled" if scaled else "")
        self.spec = name + ("" if beta == 1.0 else f":{beta:g}")
        self.stats = _ArmStats(max_length)

    def choose(self, ctx: RoundContext) -> int:
        return _ucb_index(self.stats, self.beta, self.naive, self.scaled)

    def observe(self, outcome: RoundOutcome) -> None:
        self.stats.add(outcome)

    def state(self) -> dict:
        return self.stats.to_dict()

    def load_state(self, state: dict) -> None:
        self.stats = _ArmStats.from_dict(state, self.max_length)


class ContextualUcbSpecStop(Policy):
    """UCB-SpecStop (the paper's raw-ms rule) with separate statistics per channel state."""

    def __init__(self, max_length: int, beta: float = 1.0):
        super().__init__(max_length)
        self.beta = beta
        self.spec = "ucb-specstop-ctx" + ("" if beta == 1.0 else f":{beta:g}")
        self.per_state: dict[str, _ArmStats] = {}

    def _stats(self, ctx: RoundContext) -> _ArmStats | None:
        key = str(ctx.channel_state)[:checks.MAX_KEY_LEN]
        if key not in self.per_state:
            if len(self.per_state) >= checks.MAX_TABLE:
                return None  # bounded: states beyond the table are not learned
            self.per_state[key] = _ArmStats(self.max_length)
        return self.per_state[key]

    def choose(self, ctx: RoundContext) -> int:
        return _ucb_index(self.per_state.get(str(ctx.channel_state)) or _ArmStats(self.max_length), self.beta, False,
                          False)

    def observe(self, outcome: RoundOutcome) -> None:
        stats = self._stats(outcome.context)
        if stats is not None:
            stats.add(outcome)

    def state(self) -> dict:
        return {k: v.to_dict() for k, v in self.per_state.items()}

    def load_state(self, state: dict) -> None:
        self.per_state = {k: _ArmStats.from_dict(v, self.max_length, f"state[{k}]")
                          for k, v in checks.table(state, "state").items()}
