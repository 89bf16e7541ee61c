"""control.token_signal: a per-token acceptance signal in the simulator, so per-token stop rules run there."""
import numpy as np
import pytest

from control.families import family
from control.policies import make_policy
from control.simulator import const_scenario, run_policy, streaky_scenario
from control.families import streaky_family
from control.token_signal import TokenSignal
from control.types import ControlError

SURVIVAL = np.cumprod(np.full(8, 0.8))


def test_the_same_seed_and_round_draw_the_same_tokens_and_other_rounds_differ():
    sig = TokenSignal()
    a, b, c = sig.draws(SURVIVAL, 3, 7), sig.draws(SURVIVAL, 3, 7), sig.draws(SURVIVAL, 3, 8)
    assert np.array_equal(a.accepted, b.accepted) and np.array_equal(a.signal, b.signal)
    assert not np.array_equal(a.signal, c.signal)


def test_accepted_tokens_are_the_leading_run_of_those_drafted():
    d = TokenSignal().draws(SURVIVAL, 0, 0)
    d = type(d)(np.array([True, True, False, True]), np.full(4, 0.5))
    assert [d.accepted_of(n) for n in range(5)] == [0, 1, 2, 2, 2]


def test_without_spread_or_noise_every_token_accepts_at_its_hazard_and_reads_it():
    sig = TokenSignal(spread=0.0, persistence=0.0, noise=0.0)
    draws = [sig.draws(SURVIVAL, 0, r) for r in range(4000)]
    assert np.allclose(draws[0].signal, 0.8)
    first = np.mean([d.accepted[0] for d in draws])
    assert abs(first - 0.8) < 0.03  # 4000 Bernoulli(0.8) draws: sd 0.006


def test_the_signal_predicts_acceptance_and_persists_along_the_draft():
    sig = TokenSignal()
    draws = [sig.draws(SURVIVAL, 1, r) for r in range(3000)]
    s = np.array([d.signal for d in draws])
    acc = np.array([d.accepted for d in draws])
    assert acc[s[:, 0] > 0.8, 0].mean() > acc[s[:, 0] < 0.5, 0].mean() + 0.3
    assert np.corrcoef(s[:, 2], s[:, 3])[0, 1] > 0.4  # persistence 0.7 in logits
    independent = TokenSignal(persistence=0.0)
    t = np.array([independent.draws(SURVIVAL, 1, r).signal for r in range(3000)])
    assert abs(np.corrcoef(t[:, 2], t[:, 3])[0, 1]) < 0.1


@pytest.mark.parametrize("kwargs", [{"spread": -1.0}, {"noise": float("nan")}, {"persistence": 1.0}])
def test_a_bad_signal_setting_is_refused_naming_it(kwargs):
    with pytest.raises(ControlError, match=next(iter(kwargs))):
        TokenSignal(**kwargs)


def test_a_stop_rule_drafts_fewer_tokens_than_its_cap_on_a_hard_round_and_fixed_lengths_never_stop():
    p = family("steep", "expensive-draft", 1)[0]
    sc = const_scenario(p, 50.0, 200)
    stopping = run_policy(make_policy("specdec++:0.5", p.max_length), p, sc, 0, signal=TokenSignal())
    assert stopping.lengths.min() < stopping.lengths.max() <= p.max_length
    fixed = run_policy(make_policy("fixed:6", p.max_length), p, sc, 0, signal=TokenSignal())
    assert set(fixed.lengths) == {6}


def test_policies_on_one_seed_meet_the_same_tokens():
    p = family("high-flat", "cheap-draft", 1)[0]
    sc = const_scenario(p, 50.0, 100)
    long = run_policy(make_policy("fixed:8", p.max_length), p, sc, 2, signal=TokenSignal())
    short = run_policy(make_policy("fixed:3", p.max_length), p, sc, 2, signal=TokenSignal())
    assert np.array_equal(np.minimum(long.tokens, 4), short.tokens)  # min(A, 3) + 1 of the same draws


def test_auto_stops_per_token_where_the_rule_pays_and_beats_its_own_fixed_length_path():
    p = family("steep", "expensive-draft", 1)[0]
    sc = const_scenario(p, 200.0, 600)
    head = run_policy(make_policy("auto", p.max_length, seed=0), p, sc, 0, signal=TokenSignal())
    blind = make_policy("auto", p.max_length, seed=0)
    blind.stop_signal = None
    no_head = run_policy(blind, p, sc, 0, signal=TokenSignal())
    assert head.ms_per_token < no_head.ms_per_token  # seeded: 196.2 vs 210.3 ms/token (6.7 % apart)


def test_a_per_token_signal_under_hidden_regimes_is_refused():
    p = streaky_family("cheap-draft", 1)[0]
    with pytest.raises(ControlError, match="hidden acceptance regimes"):
        run_policy(make_policy("auto", p.max_length), p, streaky_scenario(p, p.regimes, 50.0, 10), 0,
                   signal=TokenSignal())


def test_the_token_rule_bench_measures_every_rule_against_the_better_reference_of_the_run():
    from pipeline.bench.token_rules import REFERENCES, RULES, bench

    res = bench(seeds=1, rounds=60, delays=(50.0,), workers=1, profiles=[family("steep", "expensive-draft", 1)[0]])
    (cell,) = res["per_profile"][0]["cells"].values()
    assert set(cell["gap_pct"]) == set(RULES + REFERENCES)
    assert min(cell["gap_pct"][r] for r in REFERENCES) == 0.0
    assert 1 <= cell["best_fixed_length"] <= 8 and cell["best_threshold"] in res["thresholds"]
