"""`auto`'s opening (issue 23): length 1, then the middle length, which pins the compute slope in two
rounds; OPENING_MIDDLE (off: it raised the short kind's worst seed to 7.16 %) starts at the middle."""
import pytest

from control.policies import auto
from control.policies.auto import AutoPolicy
from control.types import RoundContext, RoundOutcome


@pytest.mark.parametrize("middle_first, first, second", [(False, 1, 5), (True, 5, None)])
def test_the_first_two_rounds(monkeypatch, middle_first, first, second):
    monkeypatch.setattr(auto, "OPENING_MIDDLE", middle_first)
    policy = AutoPolicy(8, seed=0)
    ctx = RoundContext(20.0)
    assert policy.choose(ctx) == first
    policy.observe(RoundOutcome(first, first, 40.0 + 10.0 * first + 40.0, ctx, measured_compute_ms=40.0 + 10.0 * first))
    if second is not None:
        assert policy.choose(ctx) == second
