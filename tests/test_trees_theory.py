"""Theory of draft-tree shapes (control/trees.py), pinned against the chain theory and brute force."""
import itertools

import numpy as np
import pytest

from control import theory
from control.profile import Profile
from control.trees import (
    Tree, TreeCost, best_shape, candidate_shapes, chain, critical_delay, expected_tokens,
    ms_per_token, optimal_trees, spine,
)
from control.types import ControlError

SURVIVAL = 0.85 ** np.arange(1, 9) * np.linspace(1.0, 0.7, 8)
# rank-1 conditional acceptance from the survival; rank 2 and 3 get part of the rest
P1 = SURVIVAL / np.concatenate([[1.0], SURVIVAL[:-1]])
ACCEPT = np.stack([P1, 0.4 * (1 - P1), 0.2 * (1 - P1)], axis=1)
COST = TreeCost(draft_step_ms=6.0, draft_node_ms=0.5, verify_ms=20.0, verify_node_ms=0.8)


def test_a_width_one_tree_is_the_chain_theory():
    chain_cost = np.array([COST.round_ms(L, L) for L in range(1, 9)])
    profile = Profile("p", chain_cost, SURVIVAL)
    b = theory.expected_tokens(SURVIVAL)
    for L in range(1, 9):
        assert expected_tokens(chain(L), ACCEPT) == pytest.approx(b[L - 1])
        assert ms_per_token(chain(L), ACCEPT, COST, 35.0) == pytest.approx(theory.ms_per_token(profile, 35.0)[L - 1])


def test_expected_tokens_is_one_plus_the_path_products():
    t = Tree((-1, -1, 0, 0, 2))  # ranks 1,2 at depth 1; ranks 1,2 under node 0; rank 1 under node 2
    a = ACCEPT
    want = 1 + a[0, 0] + a[0, 1] + a[0, 0] * a[1, 0] + a[0, 0] * a[1, 1] + a[0, 0] * a[1, 0] * a[2, 0]
    assert expected_tokens(t, a) == pytest.approx(want)


def test_more_nodes_never_lower_the_best_expected_tokens():
    values = [v for _, v in optimal_trees(ACCEPT, 30)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] > values[0]


def test_adding_a_node_to_any_tree_never_lowers_expected_tokens():
    t = spine(3, 2)
    for parent in range(-1, t.nodes):
        assert expected_tokens(Tree(t.parents + (parent,)), ACCEPT) >= expected_tokens(t, ACCEPT)


def all_trees(n):
    """Every tree of n nodes with parents before children (brute force for small n)."""
    for parents in itertools.product(*[range(-1, i) for i in range(n)]):
        yield Tree(parents)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_the_dynamic_programme_finds_the_brute_force_best_tree(n):
    dp_tree, dp_value = optimal_trees(ACCEPT, n)[n - 1]
    brute = max(expected_tokens(t, ACCEPT) for t in all_trees(n))
    assert dp_tree.nodes == n
    assert dp_value == pytest.approx(brute)
    assert expected_tokens(dp_tree, ACCEPT) == pytest.approx(dp_value)


def test_at_high_delay_a_tree_beats_the_best_chain_when_rank_two_is_ever_accepted():
    shapes = candidate_shapes(ACCEPT, 24)
    chains = [s for s in shapes if s.width == 1]
    best_chain = min(ms_per_token(c, ACCEPT, COST, 500.0) for c in chains)
    tree, j = best_shape(ACCEPT, COST, 500.0, shapes)
    assert tree.width >= 2
    assert j < best_chain
    d = critical_delay(ACCEPT, COST, shapes)
    assert 0 <= d < 500.0
    assert best_shape(ACCEPT, COST, d + 1.0, shapes)[0].width >= 2


def test_without_rank_two_acceptance_no_tree_ever_beats_a_chain():
    only_rank_one = ACCEPT.copy()
    only_rank_one[:, 1:] = 0.0
    assert critical_delay(only_rank_one, COST, candidate_shapes(only_rank_one, 16)) == np.inf


def test_spine_has_depth_times_width_nodes():
    t = spine(4, 3)
    assert (t.nodes, t.depth, t.width) == (12, 4, 3)


@pytest.mark.parametrize("bad", [np.array([0.5, 0.4]), np.array([[0.7, 0.4]]), np.array([[-0.1, 0.2]])])
def test_a_bad_acceptance_table_is_refused_with_a_reason(bad):
    with pytest.raises(ControlError, match="acceptance table"):
        expected_tokens(chain(1), bad)


def test_a_node_whose_parent_comes_later_is_refused():
    with pytest.raises(ControlError, match="node 0 has parent 1"):
        Tree((1, -1))
