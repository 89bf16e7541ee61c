"""Online tree-shape control (control/tree_shape.py): what a round says about p, the censored
estimate, the cost fit, and the learner's choices against the oracle on synthetic tables."""
import numpy as np
import pytest

from control.tree_shape import CostFit, Observation, RankTable, TreeShapeLearner, observations
from control.tree_sim import draw_ranks, oracle_shapes, walk
from control.trees import TreeCost, best_shape, chain, ms_per_token, spine
from control.types import ControlError

DEPTH = 16
P1 = np.linspace(0.8, 0.6, DEPTH)
# a pair whose second and third guesses often hold the target's token: trees pay at high delay
ACCEPT = np.stack([P1, 0.45 * (1 - P1), 0.2 * (1 - P1), 0.1 * (1 - P1)], axis=1)
# the bundled pair's measured shape of cost: one batched draft step per depth, a cheap node
COST = TreeCost(draft_step_ms=0.75, draft_node_ms=0.01, verify_ms=1.8, verify_node_ms=0.07)


def play(learner: TreeShapeLearner, accept: np.ndarray, cost: TreeCost, delay: float, rounds: int, seed: int,
         after=None) -> None:
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        tree = learner.choose(delay)
        path = walk(tree, draw_ranks(accept, rng.random(accept.shape[0])))
        learner.observe(tree, path, cost.round_ms(tree.depth, tree.nodes) * (1 + 0.1 * (2 * rng.random() - 1)))
        if after is not None:
            after(r)


def test_a_round_reports_each_reached_depths_rank_and_a_censored_miss_where_it_stopped():
    t = spine(3, 2)  # nodes 0,1 at depth 1; 2,3 under node 0; 4,5 under node 2
    assert observations(t, [0, 3]) == [Observation(1, 2, 1), Observation(2, 2, 2)]  # node 3 is a leaf
    assert observations(t, [1]) == [Observation(1, 2, 2)]  # node 1 has no children: nothing below is seen
    assert observations(t, []) == [Observation(1, 2, None)]
    assert observations(t, [0, 2]) == [Observation(1, 2, 1), Observation(2, 2, 1), Observation(3, 2, None)]


def test_a_path_that_skips_a_parent_is_refused():
    with pytest.raises(ControlError, match="not a child"):
        observations(spine(3, 2), [0, 4])


def test_the_rank_table_recovers_p_from_rounds_censored_by_narrow_trees():
    rng = np.random.default_rng(0)
    table = RankTable(DEPTH, 4)
    shapes = [chain(16), spine(16, 2), spine(16, 4)]
    for r in range(6000):
        tree = shapes[r % 3]
        table.update(observations(tree, walk(tree, draw_ranks(ACCEPT, rng.random(DEPTH)))))
    est = table.table()
    assert np.abs(est[:6] - ACCEPT[:6]).max() < 0.03  # depths every round reaches often
    assert np.all(est.sum(axis=1) <= 1 + 1e-12)


def test_a_depth_never_reached_borrows_the_pooled_estimate_not_the_prior():
    table = RankTable(4, 2)
    for _ in range(200):
        table.update([Observation(1, 2, 1)])
    assert table.table()[3, 0] > 0.9


def test_the_cost_fit_recovers_per_depth_and_per_node_cost():
    fit = CostFit()
    rng = np.random.default_rng(1)
    for _ in range(300):
        d, n = int(rng.integers(1, 16)), int(rng.integers(1, 128))
        fit.update(d, n, COST.round_ms(d, n))
    c = fit.cost()
    assert c.round_ms(14, 128) == pytest.approx(COST.round_ms(14, 128), rel=0.01)
    assert c.round_ms(2, 2) == pytest.approx(COST.round_ms(2, 2), rel=0.01)


@pytest.mark.parametrize("delay", [20.0, 50.0, 100.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_learner_converges_to_the_oracle_shapes_cost(delay, seed):
    _, oracle_j = best_shape(ACCEPT, COST, delay, oracle_shapes(ACCEPT, 128))
    learner = TreeShapeLearner(seed=seed)
    play(learner, ACCEPT, COST, delay, 3000, seed)
    assert ms_per_token(learner.best(delay), ACCEPT, COST, delay) <= 1.03 * oracle_j


@pytest.mark.parametrize("seed", [0, 1])
def test_at_zero_delay_where_trees_do_not_pay_it_picks_a_short_chain(seed):
    costly_nodes = TreeCost(draft_step_ms=0.75, draft_node_ms=0.05, verify_ms=1.8, verify_node_ms=0.5)
    oracle, _ = best_shape(ACCEPT, costly_nodes, 0.0, oracle_shapes(ACCEPT, 128))
    assert oracle.width == 1 and oracle.depth <= 3  # the premise: here a tree does not pay
    learner = TreeShapeLearner(seed=seed)
    play(learner, ACCEPT, costly_nodes, 0.0, 1500, seed)
    chosen = learner.best(0.0)
    assert chosen.width == 1 and chosen.depth <= 3


@pytest.mark.parametrize("delay", [0.0, 20.0, 50.0])
def test_after_a_thousand_rounds_no_greedy_choice_is_more_than_five_percent_behind_the_best_chain(delay):
    _, chain_j = best_shape(ACCEPT, COST, delay, [chain(L) for L in range(1, DEPTH + 1)])
    learner = TreeShapeLearner(seed=3)
    worst = []
    play(learner, ACCEPT, COST, delay, 1400, 3,
         after=lambda r: worst.append(ms_per_token(learner.best(delay), ACCEPT, COST, delay)) if r >= 1000 else None)
    assert max(worst) <= 1.05 * chain_j


def test_at_fifty_ms_every_greedy_choice_after_a_thousand_rounds_beats_every_chain():
    delay = 50.0
    _, chain_j = best_shape(ACCEPT, COST, delay, [chain(L) for L in range(1, DEPTH + 1)])
    learner = TreeShapeLearner(seed=4)
    worst = []
    play(learner, ACCEPT, COST, delay, 1400, 4,
         after=lambda r: worst.append(ms_per_token(learner.best(delay), ACCEPT, COST, delay)) if r >= 1000 else None)
    assert max(worst) < chain_j


def test_a_bad_delay_is_refused():
    with pytest.raises(ControlError, match="delay"):
        TreeShapeLearner().best(float("nan"))


def test_the_learner_only_plays_trees_whose_ranks_it_estimates():
    with pytest.raises(ControlError, match="ranks"):
        TreeShapeLearner(max_width=5, max_rank=4)
