"""`auto`'s learned belief-MDP length also gets the one step of optimism (issue 23: `auto` that cannot lock).

Where acceptance runs in hidden easy/hard streaks, `auto` plays the belief-MDP optimum for its fitted
two-regime model. The fit only knows the positions its rounds reached, so a seed whose early rounds were
short solved the table with the easy regime's deep positions guessed low and never drafted past them:
streaky/expensive-draft#1 at 55 ms, seed 15, played length 3 for the last 200 rounds where the easy
regime's best is 7 (+6.4 % over the oracle, expected gap). Optimism on the position after the table's
length, as on the pooled path, reaches them.
"""
import numpy as np
import pytest

from control.evaluation import kind_profiles, kind_scenarios
from control.families import DELAYS
from control import streaks
from control.policies import auto, make_policy
from control.simulator import expected_ms_per_token, run_policy

SEED = 15


def _run(monkeypatch, regime_optimism: bool):
    monkeypatch.setattr(auto, "REGIME_OPTIMISM", regime_optimism)
    # the fit this seed was found with (looser per-position hazards, geometric refits): it guesses the easy
    # regime's deep positions low, the case optimism exists for; the leaner fit happens not to on this seed
    monkeypatch.setattr(streaks, "PSEUDO", 1.0)
    monkeypatch.setattr(streaks, "EARLY_EVERY", None)
    monkeypatch.setattr(streaks, "TIED", False)  # the regimes found by the two free curves' test, then
    profile = next(p for p in kind_profiles("streaky", 1, 0) if p.name == "streaky/expensive-draft#1")
    sc = next(s for s in kind_scenarios("streaky", profile, DELAYS, 1000) if s.label == "streaky 55 ms")
    policy = make_policy("auto", profile.max_length, seed=SEED)
    trace = run_policy(policy, profile, sc, SEED)
    oracle = run_policy(sc.oracle_policy(), profile, sc, SEED, 0.1, None)
    gap = expected_ms_per_token(trace, sc, profile) / expected_ms_per_token(oracle, sc, profile) - 1.0
    return policy, trace, gap


@pytest.mark.slow
def test_without_optimism_the_belief_mdp_locks_a_streaky_seed_on_a_short_length(monkeypatch):
    policy, trace, gap = _run(monkeypatch, False)
    assert policy.regimes.active  # the table, not the pooled rule, chose these rounds
    assert trace.lengths[-200:].max() <= 4 and gap > 0.05, (np.bincount(trace.lengths[-200:]), gap)


@pytest.mark.slow
def test_with_optimism_the_same_seed_reaches_the_easy_regimes_long_drafts(monkeypatch):
    policy, trace, gap = _run(monkeypatch, True)
    assert policy.regimes.active
    assert (trace.lengths[-200:] >= 6).sum() >= 40 and gap < 0.03, (np.bincount(trace.lengths[-200:]), gap)
