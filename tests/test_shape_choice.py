"""Specification of the shape chooser (control/shape_choice.py) and the exact cost of rounds in
flight it prices them by (control/ahead_schedule.py). No models."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.ahead_schedule import run_ms_per_token, verdict_times
from control.proactive_cost import pipelined_ms_per_token, survival_from_alpha
from control.shape_choice import (
    FAMILIES, Calibration, Shape, StreamTreeCalibration, candidates, choose, shape_ms_per_token,
)
from control.trees import TreeCost, chain, spine
from control.types import ControlError


def table(p1: float, p2: float, depth: int = 12) -> np.ndarray:
    """Every depth alike: the draft's best token accepted with p1, its second best with p2."""
    return np.tile([p1, p2, 0.01 * (1.0 - p1 - p2)], (depth, 1))


# a pair like the bundled one, with per-node work priced as it is measured at 0 ms (a tree's verify
# and the stream tree's expansions cost more than a chain's), and its stream tree calibrated; both
# models on one compute, as in-process and on this machine
REAL = Calibration(table(0.8, 0.12), TreeCost(draft_step_ms=1.3, draft_node_ms=0.3, verify_ms=4.7, verify_node_ms=0.5),
                   StreamTreeCalibration(compute_ms_per_token=4.5, misses_per_token=0.08, new_tokens=64),
                   shared_compute=True)


def test_at_zero_delay_it_picks_a_plain_chain() -> None:
    c = choose(REAL, 0.0)
    assert c.pick.family == "chain"
    assert c.ms_per_token == min(j for _, j in c.best_by_family.values())


def test_on_two_machines_drafting_ahead_hides_the_draft_even_at_zero_delay() -> None:
    two = Calibration(REAL.accept, REAL.cost, REAL.stream, shared_compute=False)
    assert choose(two, 0.0).pick.family == "chain-ahead"
    assert choose(two, 0.0).ms_per_token < choose(REAL, 0.0).ms_per_token


def test_on_one_compute_a_round_drafted_ahead_costs_its_draft_and_its_verify_in_turn() -> None:
    assert verdict_times(2.0, 5.0, 0.0, 1, 4, shared_compute=True) == pytest.approx([7.0, 14.0, 21.0, 28.0])
    assert verdict_times(2.0, 5.0, 0.0, 1, 4) == pytest.approx([7.0, 12.0, 17.0, 22.0])


STAGE = {"chain": 0, "tree": 1, "chain-ahead": 1, "tree-ahead": 1, "stream-tree": 2}


@pytest.mark.parametrize("stream_ms", [4.5, 12.0])
def test_as_delay_grows_the_pick_leaves_the_chain_for_good_and_ends_on_the_stream_tree(stream_ms) -> None:
    cal = Calibration(REAL.accept, REAL.cost, StreamTreeCalibration(stream_ms, 0.08), shared_compute=True)
    picks = [choose(cal, d).pick.family for d in np.arange(0.0, 201.0, 1.0)]
    stages = [STAGE[f] for f in picks]
    assert stages[0] == 0 and stages[-1] == 2
    assert stages == sorted(stages)  # chain, then trees / rounds in flight, then the stream tree


def test_a_stream_tree_dearer_at_zero_delay_is_preceded_by_rounds_in_flight() -> None:
    cal = Calibration(REAL.accept, REAL.cost, StreamTreeCalibration(12.0, 0.08), shared_compute=True)
    picks = [choose(cal, d).pick for d in np.arange(0.0, 201.0, 1.0)]
    middle = [p for p in picks if STAGE[p.family] == 1]
    assert middle and any(p.rounds >= 2 for p in middle)


def test_without_a_stream_tree_calibration_long_links_go_to_trees_or_rounds_in_flight() -> None:
    cal = Calibration(REAL.accept, REAL.cost)
    assert choose(cal, 50.0).pick.family in ("tree", "chain-ahead", "tree-ahead")
    assert all(s.family != "stream-tree" for s in candidates(cal))


def test_a_margin_keeps_the_chain_where_another_family_is_priced_within_it() -> None:
    cal = Calibration(table(0.8, 0.12), TreeCost(1.3, 0.03, 4.7, 0.16))  # trees priced cheap: a tree wins at 0 ms
    bare = choose(cal, 0.0)
    assert bare.pick.family != "chain"
    ratio = bare.ms_per_token / bare.best_by_family["chain"][1]
    assert choose(cal, 0.0, margin=1.0 - ratio + 0.01).pick.family == "chain"
    assert choose(cal, 0.0, margin=1.0 - ratio - 0.01).pick == bare.pick


def test_the_reason_names_the_pick_and_the_runner_up_family() -> None:
    c = choose(REAL, 50.0)
    assert c.reason.startswith(f"{c.pick.family} {c.pick.label} models")
    assert "below the next family" in c.reason


def test_bad_input_is_refused_in_one_line() -> None:
    with pytest.raises(ControlError, match="delay must be a finite ms >= 0"):
        choose(REAL, -1.0)
    with pytest.raises(ControlError, match="margin must lie in"):
        choose(REAL, 0.0, margin=1.5)
    with pytest.raises(ControlError, match="misses per token must lie in"):
        StreamTreeCalibration(3.0, 1.5)
    with pytest.raises(ControlError, match="needs the table to reach depth 13"):
        shape_ms_per_token(Shape("chain-ahead", chain(12), 2), REAL, 10.0)


# --- the schedule of rounds in flight ---------------------------------------------------------

@pytest.mark.parametrize("one_way", [0.0, 5.0, 50.0])
@pytest.mark.parametrize("length", [2, 4, 8])
def test_one_round_in_flight_is_the_renewal_formula(one_way, length) -> None:
    s = survival_from_alpha(0.8, length)
    j = run_ms_per_token((length + 1) * 1.3, 5.0, one_way, 1, s[length + 1], 1 + s[1:length + 1].sum())
    assert j == pytest.approx(pipelined_ms_per_token(1.3, 5.0, one_way, length, 1, alpha=0.8))


def test_with_every_round_kept_it_is_the_steady_period() -> None:
    # R = 3, a 100 ms round trip: one cycle of three verdicts per (2d + verify), so P = 35 ms
    assert run_ms_per_token(2.0, 5.0, 50.0, 3, 1.0, 1.0) == pytest.approx(35.0)


def test_a_burst_of_rounds_in_flight_comes_back_a_draft_apart() -> None:
    v = verdict_times(2.0, 1.0, 50.0, 3, 4)
    assert np.diff(v)[:2] == pytest.approx([2.0, 2.0])  # rounds 2 and 3 were sent a draft after round 1
    assert v[3] == pytest.approx(v[0] + 101.0)  # round 4 waited for round 1's verdict to free a slot


def test_spreading_the_round_trip_evenly_overprices_two_or_more_rounds_in_flight() -> None:
    s = survival_from_alpha(0.8, 3)
    exact = run_ms_per_token(4 * 1.3, 5.0, 50.0, 3, s[4], 1 + s[1:4].sum())
    assert exact < 0.95 * pipelined_ms_per_token(1.3, 5.0, 50.0, 3, 3, alpha=0.8)


# --- properties ---------------------------------------------------------------------------------

calibrations = st.builds(
    lambda p1, p2, step, node, verify, vnode, c0, m: Calibration(
        table(p1, min(p2, 1.0 - p1), depth=8), TreeCost(step, node, verify, vnode), StreamTreeCalibration(c0, m)),
    st.floats(0.3, 0.97), st.floats(0.0, 0.5), st.floats(0.1, 5.0), st.floats(0.0, 1.0), st.floats(0.5, 20.0),
    st.floats(0.0, 1.0), st.floats(0.5, 30.0), st.floats(0.0, 0.5))


@settings(max_examples=40, deadline=None)
@given(cal=calibrations, delay=st.floats(0.0, 300.0))
def test_the_pick_is_the_least_modelled_cost_of_all_candidates(cal, delay) -> None:
    shapes = candidates(cal, max_nodes=16, max_rounds=3)
    c = choose(cal, delay, shapes)
    costs = [shape_ms_per_token(s, cal, delay) for s in shapes]
    assert c.ms_per_token == pytest.approx(min(costs), rel=1e-9)
    assert c.ms_per_token == pytest.approx(shape_ms_per_token(c.pick, cal, delay), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(cal=calibrations, d1=st.floats(0.0, 150.0), step=st.floats(1.0, 150.0))
def test_among_one_round_per_trip_shapes_the_pick_pays_fewer_round_trips_per_token_as_delay_grows(cal, d1, step) -> None:
    # every cost is affine in the delay there (slope 2 x round trips per token): the lower envelope
    # of lines, so the pick's slope cannot go up with the delay
    shapes = [s for s in candidates(cal, max_nodes=16, max_rounds=1) if not s.family.endswith("ahead")]

    def slope(s: Shape, d: float) -> float:
        return shape_ms_per_token(s, cal, d + 1.0) - shape_ms_per_token(s, cal, d)

    a, b = choose(cal, d1, shapes).pick, choose(cal, d1 + step, shapes).pick
    assert slope(b, d1) <= slope(a, d1) + 1e-9


def test_the_chain_family_is_the_width_one_tree_model() -> None:
    s = Shape("chain", chain(4))
    assert s.label == "L4" and Shape("tree-ahead", spine(3, 2), 2).label == "3x2 R2"
    expected = (1.3 * 4 + 0.3 * 4 + 4.7 + 0.5 * 4 + 2 * 20.0) / (1 + 0.8 + 0.8 ** 2 + 0.8 ** 3 + 0.8 ** 4)
    assert shape_ms_per_token(s, REAL, 20.0) == pytest.approx(expected)
