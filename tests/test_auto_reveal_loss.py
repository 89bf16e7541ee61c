"""The reveal rule bounded by expected loss (REVEAL_BOUND="loss", issue 23).

A bound on the longer round's extra compute is loose at high delay: at 200 ms two more tokens of an
expensive drafter are "cheap" against the round, and low-flat's positions past 1 accept ~0.34, so
the reveal only loses there. Judging the longer length's ms/token with the added positions at an upper
acceptance quantile (as optimism does for one position) still lengthens streaky's stuck seed, whose
later positions the pool says accept well, and leaves the low-flat drafter alone.
"""
import numpy as np
import pytest

from control.families import family, streaky_family
from control.policies import auto
from control.simulator import const_scenario, run_policy, streaky_scenario


def _streaky_lengths() -> np.ndarray:
    prof = streaky_family("cheap-draft", 1)[0]
    return run_policy(auto.AutoPolicy(8, seed=3), prof, streaky_scenario(prof, prof.regimes, 5.0, 1000), 3).lengths[:300]


def _low_flat_lengths(seed: int) -> np.ndarray:
    prof = family("low-flat", "expensive-draft", 1)[0]
    return run_policy(auto.AutoPolicy(8, seed=seed), prof, const_scenario(prof, 200.0, 200), seed).lengths


@pytest.fixture
def reveal(monkeypatch):
    monkeypatch.setattr(auto, "REVEAL_RATE", 1.0)
    monkeypatch.setattr(auto, "REVEAL_COST", 0.2)
    monkeypatch.setattr(auto, "REVEAL_MARGIN", 0.05)


@pytest.mark.parametrize("bound", ["cost", "loss"])
def test_the_stuck_streaky_seed_is_lengthened_under_either_bound(reveal, monkeypatch, bound):
    monkeypatch.setattr(auto, "REVEAL_BOUND", bound)
    past = int(np.sum(_streaky_lengths()[100:] >= 3))
    assert past >= 15, past  # rule off: 7 of rounds 101-300 at length >= 3


def test_a_low_flat_expensive_drafter_at_high_delay_is_left_alone_by_the_loss_bound(reveal, monkeypatch):
    monkeypatch.setattr(auto, "REVEAL_BOUND", "loss")
    on = _low_flat_lengths(1)
    monkeypatch.setattr(auto, "REVEAL_RATE", None)
    off = _low_flat_lengths(1)
    # the cost bound (0.2) plays 34 instead of 27 of the 200 rounds at length >= 3 here
    assert np.array_equal(on, off), (int(np.sum(on >= 3)), int(np.sum(off >= 3)))


def test_an_unknown_bound_is_refused(reveal, monkeypatch):
    monkeypatch.setattr(auto, "REVEAL_BOUND", "worst")
    with pytest.raises(ValueError, match="REVEAL_BOUND"):
        _streaky_lengths()


def _high_flat_lengths(seed: int) -> np.ndarray:
    prof = family("high-flat", "expensive-draft", 1)[0]
    return run_policy(auto.AutoPolicy(8, seed=seed), prof, const_scenario(prof, 0.0, 200), seed).lengths


def test_the_loss_bound_alone_lengthens_a_well_accepting_expensive_drafter_at_0_ms(reveal, monkeypatch):
    # early, the added positions' upper quantile makes a near-tie look within the margin: why "both" exists
    monkeypatch.setattr(auto, "REVEAL_BOUND", "loss")
    on = int(np.sum(_high_flat_lengths(3) >= 3))
    monkeypatch.setattr(auto, "REVEAL_RATE", None)
    assert on > int(np.sum(_high_flat_lengths(3) >= 3)) + 3  # 9 against 3


@pytest.mark.parametrize("lengths, seed", [(_high_flat_lengths, 3), (_low_flat_lengths, 1)],
                         ids=["expensive-0ms", "low-flat-200ms"])
def test_both_bounds_leave_each_failure_of_a_single_bound_alone(reveal, monkeypatch, lengths, seed):
    monkeypatch.setattr(auto, "REVEAL_BOUND", "both")
    on = lengths(seed)
    monkeypatch.setattr(auto, "REVEAL_RATE", None)
    assert np.array_equal(on, lengths(seed))
