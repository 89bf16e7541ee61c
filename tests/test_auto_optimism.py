"""`auto`'s one step of optimism on the next position ends on evidence, not after a count (issue 23).

A weak drafter (0.34 acceptance at every position) with an expensive draft at 150 ms: length 1 is
best, and length 2 would need position 2 to accept ~0.50 of the rounds that reach it to pay. A
count of 60 reaches kept `auto` optimistic on length 2 for ~175 rounds of it (the families cell
low-flat/expensive-draft at markov 20/150 ms, 1.02 % against naive-ucb's 0.35 %).
"""
import numpy as np
import pytest

from control.policies import auto
from control.policies.auto import AutoPolicy
from control.types import RoundContext, RoundOutcome

COMPUTE = (129.5, 184.2)  # ms at lengths 1 and 2 (the family member's)
DELAY = 150.0


@pytest.fixture(autouse=True)
def evidence_stop(monkeypatch):
    """The rule as screened in docs/policies/auto-issue23.md (off by default: it did not clear the bar)."""
    monkeypatch.setattr(auto, "OPTIMISM_STOP_Z", 1.0)
    monkeypatch.setattr(auto, "OPTIMISM_STOP_MIN", 20)


def _fed(seed: int = 0) -> AutoPolicy:
    """300 rounds of length 1 (102 first tokens accepted) and 118 of length 2 (40 reached position 2,
    14 of them accepted it: 0.35), in a seeded shuffled order."""
    rounds = [(1, 1)] * 102 + [(1, 0)] * 198 + [(2, 0)] * 78 + [(2, 1)] * 26 + [(2, 2)] * 14
    order = np.random.default_rng(seed).permutation(len(rounds))
    policy = AutoPolicy(8, seed=seed)
    ctx = RoundContext(DELAY)
    for i in order:
        L, a = rounds[i]
        c = COMPUTE[L - 1]
        policy.observe(RoundOutcome(L, a, c + 2 * DELAY, ctx, measured_compute_ms=c))
    return policy


def test_optimism_on_length_two_ends_once_its_own_rounds_put_it_clearly_below_what_it_needs():
    policy = _fed()
    assert policy.at_risk[1] == 40 < 60  # a count of 60 reaches would still be optimistic here
    needed = (COMPUTE[1] + 2 * DELAY) / (COMPUTE[0] + 2 * DELAY) * (1 + 0.34) - (1 + 0.34)
    assert 0.48 < needed / 0.34 < 0.52  # position 2 must accept ~0.50 for length 2 to pay; it shows 0.35
    choices = [policy.choose(RoundContext(DELAY)) for _ in range(100)]
    assert np.mean(np.array(choices) == 1) >= 0.9, np.bincount(choices)


def test_optimism_stays_while_position_two_is_barely_observed():
    # 3 of 10 reaches accepted: below the 0.50 it needs, but too few rounds to be clear, so length 2 is still tried
    rounds = [(1, 1)] * 34 + [(1, 0)] * 66 + [(2, 0)] * 20 + [(2, 1)] * 7 + [(2, 2)] * 3
    policy = AutoPolicy(8, seed=0)
    ctx = RoundContext(DELAY)
    for i in np.random.default_rng(0).permutation(len(rounds)):
        L, a = rounds[i]
        c = COMPUTE[L - 1]
        policy.observe(RoundOutcome(L, a, c + 2 * DELAY, ctx, measured_compute_ms=c))
    choices = [policy.choose(RoundContext(DELAY)) for _ in range(100)]
    assert np.mean(np.array(choices) == 2) >= 0.5, np.bincount(choices)
