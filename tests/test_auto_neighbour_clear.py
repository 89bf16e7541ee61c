"""The opening plays a neighbour of the leader three times only while it could still be the better one
(NEIGHBOUR_CLEAR, issue 23: the three plays of each neighbour were 0.24 of the short kind's 1.06 %
expected gap over 200 rounds).

An expensive drafter (300 ms per drafted token over a 10 ms verify) whose first token is rejected:
length 1 leads, and one round of length 2 costs 1.9x its compute for at most a small share more tokens.
"""
import numpy as np
import pytest

from control.policies import auto
from control.policies.auto import AutoPolicy
from control.types import RoundContext, RoundOutcome

DELAY = 0.0


def _compute(L: int) -> float:
    return 10.0 + 300.0 * L


def _opened(lengths_accepted: list[tuple[int, int]]) -> AutoPolicy:
    policy = AutoPolicy(8, seed=0)
    ctx = RoundContext(DELAY)
    for L, a in lengths_accepted:
        policy.observe(RoundOutcome(L, a, _compute(L) + 2 * DELAY, ctx, measured_compute_ms=_compute(L)))
    return policy


OPENING = [(1, 0), (5, 0), (1, 0), (1, 0), (2, 0)]  # the opening rounds, the leader, one play of its neighbour


def _choices(policy: AutoPolicy) -> np.ndarray:
    return np.array([policy.choose(RoundContext(DELAY)) for _ in range(20)])


def test_a_neighbour_one_play_shows_clearly_slower_is_not_replayed(monkeypatch):
    monkeypatch.setattr(auto, "NEIGHBOUR_CLEAR", 0.2)
    policy = _opened(OPENING)
    assert policy._leader(DELAY, policy.compute_estimate(), 1.0 + np.cumsum(np.cumprod(policy.hazard_sample(None)))) == 0
    assert np.mean(_choices(policy) == 2) < 0.5


def test_without_the_rule_the_neighbour_is_played_three_times(monkeypatch):
    monkeypatch.setattr(auto, "NEIGHBOUR_CLEAR", None)
    assert (_choices(_opened(OPENING)) == 2).all()


@pytest.mark.parametrize("clear", [0.2, None])
def test_a_neighbour_never_played_is_played_whatever_the_rule(monkeypatch, clear):
    monkeypatch.setattr(auto, "NEIGHBOUR_CLEAR", clear)
    assert _opened(OPENING[:4]).choose(RoundContext(DELAY)) == 2
