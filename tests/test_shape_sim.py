"""Specification of the shape simulator (control/shape_sim.py): its discrete-event edge, link and
cloud agree with the closed-form cost of every shape within sampling error, and the online choice
of shape is measured against the best fixed shape in hindsight on the same seeds. No models."""
import numpy as np
import pytest

from control.proactive_cost import pipelined_ms_per_token
from control.shape_choice import Calibration, Shape, StreamTreeCalibration, candidates, shape_ms_per_token
from control.shape_sim import compare, fixed, online, play_rounds
from control.trees import TreeCost, chain, spine
from tests.test_shape_choice import REAL, table

SEEDS = 12


def realized(shape: Shape, cal: Calibration, delay: float, requests: int = 8, tokens: int = 400) -> tuple[float, float]:
    """Mean over seeds of a seed's ms/token, and its standard error."""
    ms = np.array([fixed(shape, cal, delay, requests, tokens, s).ms_per_token for s in range(SEEDS)])
    return float(ms.mean()), float(ms.std(ddof=1) / np.sqrt(SEEDS))


SHAPES = [Shape("chain", chain(4)), Shape("tree", spine(3, 2)), Shape("chain-ahead", chain(3), 1),
          Shape("chain-ahead", chain(3), 3), Shape("tree-ahead", spine(3, 2), 4), Shape("chain-ahead", chain(8), 5)]


@pytest.mark.parametrize("shared", [False, True], ids=["two-machines", "one-compute"])
@pytest.mark.parametrize("delay", [0.0, 3.0, 50.0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.family}-{s.label}")
def test_the_simulated_ms_per_token_is_the_closed_form_within_sampling_error(shape, delay, shared) -> None:
    cal = Calibration(REAL.accept, REAL.cost, REAL.stream, shared_compute=shared)
    mean, se = realized(shape, cal, delay)
    assert abs(mean - shape_ms_per_token(shape, cal, delay)) <= 4 * se


@pytest.mark.parametrize("delay", [0.0, 50.0])
def test_the_simulated_stream_tree_is_its_model_within_sampling_error(delay) -> None:
    mean, se = realized(Shape("stream-tree", None), REAL, delay, requests=20, tokens=64)
    assert abs(mean - shape_ms_per_token(Shape("stream-tree", None), REAL, delay)) <= 4 * se


def test_negative_control_the_even_spread_of_the_round_trip_is_refuted_for_three_rounds_in_flight() -> None:
    cal = Calibration(table(0.8, 0.0), TreeCost(1.3, 0.0, 5.0, 0.0))  # chains at alpha 0.8, 1.3 ms/draft token
    shape = Shape("chain-ahead", chain(3), 3)
    mean, se = realized(shape, cal, 50.0)
    even = pipelined_ms_per_token(1.3, 5.0, 50.0, 3, 3, alpha=0.8)
    assert abs(mean - shape_ms_per_token(shape, cal, 50.0)) <= 4 * se
    assert even - mean > 10 * se


def test_a_miss_voids_the_rounds_built_on_it_and_costs_one_round_trip() -> None:
    # every round is missed at its first draft: runs of one round, each a full draft + round trip + verify
    cal = Calibration(np.array([[0.0, 0.0]] * 6), TreeCost(1.0, 0.0, 2.0, 0.0))
    p = play_rounds(Shape("chain-ahead", chain(2), 4), cal, 10.0, 5, np.random.default_rng(0))
    assert p.tokens == 5 and p.misses == 5
    assert p.ms == pytest.approx(5 * (3 * 1.0 + 20.0 + 2.0))


def test_on_the_same_seeds_the_models_pick_is_the_best_fixed_shape_in_hindsight_at_zero_and_fifty() -> None:
    res = compare(REAL, [0.0, 50.0], requests=40, seeds=2)
    for row in res["rows"]:
        assert row["model_pick"]["ms_per_token"] == pytest.approx(row["best_in_hindsight"]["ms_per_token"], rel=0.02)


def test_the_online_choice_learns_to_leave_the_chain_on_a_long_link() -> None:
    shapes = candidates(REAL, max_nodes=16)
    best_chain = fixed(Shape("chain", chain(11)), REAL, 50.0, 60, 64, 0).ms_per_token
    played, used = online(REAL, 50.0, 60, 64, 0, shapes)
    assert played.ms_per_token < 0.7 * best_chain
    assert used["stream-tree"] > 0.6 * 60


def test_the_online_choice_learns_a_stream_tree_that_misses_more_than_hoped() -> None:
    # optimistic about the stream tree until it plays it: here it misses one token in two
    cal = Calibration(REAL.accept, REAL.cost, StreamTreeCalibration(4.5, 0.5), shared_compute=True)
    played, used = online(cal, 50.0, 80, 64, 0, candidates(cal, max_nodes=16))
    assert used.get("stream-tree", 0) < 0.25 * 80
    best = min(fixed(s, cal, 50.0, 80, 64, 0).ms_per_token for s in
               (Shape("tree-ahead", spine(3, 2), 5), Shape("chain-ahead", chain(4), 5), Shape("tree", spine(8, 3))))
    assert played.ms_per_token < 1.25 * best
