"""The renewal-reward theory of the draft length, pinned against brute force."""
import numpy as np
import pytest

from control.markov import MarkovChannel, brute_force_optimum, evaluate_policy, solve_smdp
from control.profile import Profile, parametric_profile
from control.types import ControlError
from control.theory import (
    best_length, critical_delay, dinkelbach_stop, geometric_expected_tokens, ms_per_token,
    rejection_threshold, theory_table, threshold_length,
)

GEOM = parametric_profile("geom", 0.8, 6.0, 1.0, 20.0, 0.5, 30)
HEAVY = Profile("heavy", 16.0 + 14.0 * np.arange(1, 13), 0.4 * 0.88 ** np.arange(12))


def brute_j(profile, L, d):
    b = 1 + sum(profile.survival[:L])
    return (profile.compute_ms[L - 1] + 2 * d) / b


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 0.95])
def test_geometric_expected_tokens_matches_the_sum(alpha):
    for L in range(1, 15):
        assert geometric_expected_tokens(alpha, L) == pytest.approx(1 + sum(alpha ** i for i in range(1, L + 1)))


def test_ms_per_token_is_time_over_expected_tokens():
    j = ms_per_token(HEAVY, 40.0)
    for L in range(1, 13):
        assert j[L - 1] == pytest.approx(brute_j(HEAVY, L, 40.0))


@pytest.mark.parametrize("profile", [GEOM, HEAVY])
def test_best_length_is_the_brute_force_argmin(profile):
    for d in [0, 3, 20, 55, 111, 150, 400]:
        Ls = range(1, profile.max_length + 1)
        assert best_length(profile, d)[0] == min(Ls, key=lambda L: (brute_j(profile, L, d), L))


@pytest.mark.parametrize("profile", [GEOM, HEAVY])
def test_best_length_is_non_decreasing_in_delay(profile):
    lengths = [best_length(profile, d)[0] for d in np.linspace(0, 2000, 400)]
    assert all(a <= b for a, b in zip(lengths, lengths[1:]))


def test_best_length_grows_like_log_delay_for_geometric_acceptance():
    prof = parametric_profile("g", 0.7, 2.0, 0.0, 5.0, 0.0, 200)
    ds = np.array([1e2, 1e3, 1e4, 1e5, 1e6])
    ls = np.array([best_length(prof, d)[0] for d in ds])
    slope = np.polyfit(np.log(ds), ls, 1)[0]
    assert slope == pytest.approx(1 / np.log(1 / 0.7), rel=0.15)


@pytest.mark.parametrize("profile", [GEOM, HEAVY])
def test_threshold_rule_gives_the_argmin_for_affine_costs(profile):
    for d in [0, 10, 55, 150]:
        assert threshold_length(profile, d) == best_length(profile, d)[0]


@pytest.mark.parametrize("profile", [GEOM, HEAVY])
def test_critical_delay_is_where_some_longer_draft_first_beats_one_token(profile):
    dc = critical_delay(profile)
    direct = lambda d: ms_per_token(profile, d)[1:].min() < ms_per_token(profile, d)[0]
    assert not direct(max(dc - 1e-6, 0)) or dc == 0
    assert direct(dc + 1e-6)
    grid = np.linspace(0, dc + 50, 2000)
    first = next(d for d in grid if direct(d))
    assert first == pytest.approx(dc, abs=(dc + 50) / 1999 + 1e-9)


def test_measured_tokens_per_round_replace_the_survivals_in_the_fixed_length_theory():
    b = 1.0 + np.cumsum(HEAVY.survival)
    assert critical_delay(HEAVY, b) == critical_delay(HEAVY)
    # a length-1 round that yields more than the survival says pushes the critical delay out
    more = b.copy()
    more[0] += 0.05
    assert critical_delay(HEAVY, more) > critical_delay(HEAVY)
    assert np.allclose(ms_per_token(HEAVY, 40.0, more)[1:], ms_per_token(HEAVY, 40.0)[1:])
    assert best_length(HEAVY, 0.0, more) == (1, pytest.approx(HEAVY.compute_ms[0] / more[0]))


def test_tokens_per_round_for_the_wrong_number_of_lengths_is_one_clear_error():
    with pytest.raises(ControlError, match="tokens per round: 3 lengths for a profile of 12"):
        critical_delay(HEAVY, np.ones(3))


def test_heavy_head_profile_has_a_positive_critical_delay():
    assert critical_delay(HEAVY) > 5.0
    assert best_length(HEAVY, 0)[0] == 1


def test_dinkelbach_stop_rule_gives_the_optimal_length():
    for d in [0, 20, 111]:
        lam = best_length(HEAVY, d)[1]
        assert dinkelbach_stop(HEAVY.survival, lam, 14.0) == best_length(HEAVY, d)[0]


def test_rejection_threshold_rises_with_delay():
    hs = [rejection_threshold(GEOM, d) for d in (0, 20, 100, 500)]
    assert all(0 <= h < 1 for h in hs) and hs == sorted(hs)


def test_theory_table_shape():
    t = theory_table(GEOM, [0, 20])
    assert set(t) == {"profile", "critical_delay_ms", "rows"}
    assert [r["delay_ms"] for r in t["rows"]] == [0, 20]


SMALL = Profile("small", np.array([10.0, 14.0, 18.0, 22.0]), np.array([0.7, 0.5, 0.35, 0.25]))


@pytest.mark.parametrize("scale", [None, [1.0, 3.0, 0.5]])
def test_markov_solver_agrees_with_brute_force_policy_evaluation(scale):
    chan = MarkovChannel(np.array([0.0, 40.0, 150.0]), np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]),
                         None if scale is None else np.array(scale))
    sol = solve_smdp(SMALL, chan)
    bf_j, bf_lengths = brute_force_optimum(SMALL, chan)
    assert sol.ms_per_token == pytest.approx(bf_j, rel=1e-6)
    assert evaluate_policy(SMALL, chan, sol.lengths) == pytest.approx(bf_j, rel=1e-6)


def test_additive_delay_makes_the_optimal_length_state_independent():
    chan = MarkovChannel(np.array([0.0, 40.0, 150.0]), np.full((3, 3), 1 / 3))
    sol = solve_smdp(SMALL, chan)
    assert len(set(sol.lengths)) == 1 and not sol.state_dependence_pays
    assert sol.myopic_ms_per_token >= sol.ms_per_token - 1e-9


def test_state_dependent_compute_makes_state_dependence_pay():
    chan = MarkovChannel(np.array([5.0, 5.0]), np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([1.0, 8.0]))
    sol = solve_smdp(SMALL, chan)
    assert sol.state_dependence_pays and len(set(sol.lengths)) == 2
