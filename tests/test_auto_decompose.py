"""pipeline.bench.auto_decompose: `auto` told the compute and/or the acceptance (issue 23's short horizon)."""
import numpy as np

from control.families import family
from control.simulator import const_scenario, run_policy
from control.theory import best_length
from pipeline.bench.auto_decompose import VARIANTS, Replay, decompose, told_auto


def test_auto_told_everything_plays_the_oracle_length_from_its_first_round():
    p = family("high-flat", "cheap-draft", 1)[0]
    best, _ = best_length(p, 50.0)
    trace = run_policy(told_auto(p, 0, compute=True, acceptance=True), p, const_scenario(p, 50.0, 40), 0)
    assert trace.lengths[0] == best
    assert np.mean(trace.lengths == best) >= 0.8


def test_auto_told_the_compute_skips_the_opening_but_still_learns_acceptance():
    p = family("high-flat", "cheap-draft", 1)[0]
    a = told_auto(p, 0, compute=True, acceptance=False)
    assert a.n_obs == 2 and a.at_risk.sum() == 0
    b = told_auto(p, 0, compute=False, acceptance=True)
    assert b.n_obs == 0 and b.arm_n.sum() == 0 and b.at_risk[0] == 1000.0


def test_replay_plays_its_lengths_then_holds_the_last():
    r = Replay([1, 5, 3])
    assert [r.choose(None) for _ in range(5)] == [1, 5, 3, 3, 3]


def test_decompose_reports_every_variant_and_knowing_both_beats_knowing_neither():
    ps = [family("heavy-head", "cheap-draft", 1)[0]]
    res = decompose(seeds=2, rounds=60, workers=1, profiles=ps)
    assert set(res["summary"]) == set(VARIANTS)
    assert len(res["by_delay"]) == 8
    s = res["summary"]
    assert s["auto told both"]["expected_mean_gap_pct"] < s["auto"]["expected_mean_gap_pct"]
