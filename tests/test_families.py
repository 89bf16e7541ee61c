"""Generated profile families and the policy evaluation over them (`specstop bench policies`)."""
import numpy as np

from control.evaluation import evaluate
from control.families import ACCEPTANCE, COMPUTE, all_families, family, near_tie
from control.theory import ms_per_token


def test_the_same_seed_draws_the_same_profiles():
    a, b = all_families(members=2, seed=3), all_families(members=2, seed=3)
    assert [p.name for p in a] == [p.name for p in b]
    assert all(np.array_equal(x.survival, y.survival) and np.array_equal(x.compute_ms, y.compute_ms)
               for x, y in zip(a, b))


def test_another_seed_draws_other_profiles():
    a, b = family("low-flat", "cheap-draft", 2, seed=0), family("low-flat", "cheap-draft", 2, seed=1)
    assert not np.array_equal(a[0].survival, b[0].survival)


def test_every_shape_is_covered_with_valid_profiles():
    profiles = all_families(members=1)
    names = {p.name.split("#")[0] for p in profiles}
    assert {f"{a}/{c}" for a in ACCEPTANCE for c in COMPUTE} <= names
    for p in profiles:
        assert (np.diff(p.survival) <= 1e-12).all() and (p.survival > 0).all() and (p.survival <= 1).all()
        assert (np.diff(p.compute_ms) > 0).all()


def test_heavy_head_members_have_a_first_token_far_below_the_rest():
    for p in family("heavy-head", "expensive-draft", 3):
        h = p.survival[1:] / p.survival[:-1]
        assert p.survival[0] <= 0.5 and (h >= 0.8 - 1e-9).all()


def test_near_tie_members_have_two_lengths_within_one_and_a_half_percent_somewhere():
    for p in family("high-flat", "cheap-draft", 2, tie=True):
        assert near_tie(p)
        found = any(np.sort(ms_per_token(p, d))[1] <= 1.015 * np.sort(ms_per_token(p, d))[0]
                    for d in np.linspace(0, 1000, 201))
        assert found


def test_evaluation_reports_mean_p90_and_worst_seed_and_the_best_beta():
    res = evaluate(family("steep", "cheap-draft", 1), policies=("auto", "ucb-specstop"), delays=(20.0,),
                   rounds=60, seeds=3, workers=1, changing=True)
    s = res["summary"]
    assert set(s) == {"auto", "ucb-specstop", "ucb-specstop (best beta)", "ucb-specstop-scaled (best beta)"}
    for v in s.values():
        assert v["cells"] == 3  # const 20 ms, wall-clock drift, wall-clock markov
        assert v["worst_seed_pct"] >= v["worst_p90_pct"] - 1e-9
        assert v["expected"]["worst_seed_pct"] >= v["expected"]["mean_gap_pct"] - 1e-9
    per = res["per_profile"][0]
    assert per["best_beta"]["ucb-specstop"] in (0.01, 0.1, 1.0, 10.0, 100.0)


def test_non_affine_members_jump_at_a_middle_length_and_have_two_local_minima_somewhere():
    from control.families import DELAYS, local_minima, non_affine_family
    for p in non_affine_family("heavy-head", "cheap-draft", 2):
        steps = np.diff(p.compute_ms)
        assert steps.max() > 1.5 * np.median(steps)  # one jump, not an affine shape
        assert any(len(local_minima(p, d)) >= 2 for d in DELAYS)


def test_streaky_members_carry_two_regimes_whose_mixture_is_their_survival():
    from control.families import streaky_family
    for p in streaky_family("expensive-draft", 2):
        assert p.regimes is not None and p.regimes.survival[0, 0] > p.regimes.survival[1, 0]
        assert np.allclose(p.survival, p.regimes.mixture())
        assert np.allclose(p.truncated(4).regimes.survival, p.regimes.survival[:, :4])


def test_the_new_kinds_are_evaluated_by_kind_and_count_cells_behind_a_rival():
    res = evaluate(None, policies=("auto", "ucb-specstop"), rounds=60, seeds=2, workers=1, tuned=False,
                   kinds=("jitter",), members=1)
    for kind in ("jitter",):
        s = res["by_kind"][kind]
        assert set(s) == {"auto", "ucb-specstop", "hf-heuristic"}
        assert all(0 <= v["cells_behind_a_rival"] <= v["cells"] for v in s.values())


def test_a_rival_ahead_by_luck_is_behind_but_not_clearly_behind():
    from control.evaluation import _behind
    row = lambda seeds: {"mean": float(np.mean(seeds)), "seeds": seeds}  # noqa: E731
    per = [{"policies": {"auto": {"c": row([1.0, 3.0, 0.5, 2.5, 1.5])},
                         "rival": {"c": row([1.2, 2.6, 0.7, 2.0, 1.4])}}}]  # 0.12 ahead, seeds disagree
    assert _behind(per, "auto", "mean") == 1
    assert _behind(per, "auto", "mean", clear=True) == 0
    per[0]["policies"]["rival"]["c"] = row([0.5, 2.4, 0.1, 2.0, 1.0])  # ahead on every seed by ~0.5
    assert _behind(per, "auto", "mean", clear=True) == 1


def test_clearly_behind_is_unknown_where_a_saved_row_has_no_per_seed_gaps():
    from control.evaluation import _behind
    per = [{"policies": {"auto": {"c": {"mean": 1.0, "seeds": [1.0, 1.0]}}, "rival": {"c": {"mean": 0.5}}}}]
    assert _behind(per, "auto", "mean") == 1 and _behind(per, "auto", "mean", clear=True) is None


def test_the_paired_interval_needs_two_seeds_and_shrinks_with_more():
    from control.evaluation import clearly_above
    assert not clearly_above([5.0])
    assert not clearly_above([0.3, -0.1, 0.4])  # mean 0.2, interval (-0.46, 0.86)
    assert clearly_above([0.3, -0.1, 0.4] * 10)  # the same spread over 30 seeds


def test_the_evaluation_counts_cells_clearly_behind_from_each_rows_seeds():
    res = evaluate(family("steep", "cheap-draft", 1), policies=("auto", "naive-ucb"), delays=(20.0,), rounds=60,
                   seeds=3, workers=1, tuned=False, changing=False)
    cell = res["per_profile"][0]["policies"]["auto"]["const 20 ms"]
    assert len(cell["seeds"]) == len(cell["expected_seeds"]) == 3
    assert np.isclose(np.mean(cell["seeds"]), cell["mean"], atol=1e-3)
    s = res["summary"]["auto"]
    assert 0 <= s["cells_clearly_behind_a_rival"] <= s["cells_behind_a_rival"] <= s["cells"]
