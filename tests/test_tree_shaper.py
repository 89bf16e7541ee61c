"""The edge's `--tree auto` (nodes/protocol/tree_shape.TreeShaper): the online shape learner with
no profile, told only what an edge sees of each tree round (the shape it sent, the path the
verifier accepted, draft + verify ms). Rounds are drawn from a known acceptance table
(control/tree_sim), seeded, so the shapes it settles on can be priced against the truth."""
import numpy as np
import pytest

from control.tree_sim import draw_ranks, oracle_shapes, walk
from control.trees import TreeCost, best_shape, chain, ms_per_token
from nodes.protocol.tree_shape import AUTO, TreeShaper
from schemas.trees import MAX_TREE_NODES

# 8 depths x 4 ranks: the draft's best guess is right 70 % of the time, its second 12 %, ...
ACCEPT = np.array([[0.7, 0.12, 0.05, 0.03]] * 8)
CHEAP_NODES = TreeCost(draft_step_ms=1.0, draft_node_ms=0.02, verify_ms=3.0, verify_node_ms=0.05)
DEAR_NODES = TreeCost(draft_step_ms=0.3, draft_node_ms=0.5, verify_ms=1.0, verify_node_ms=1.5)


def play(shaper: TreeShaper, cost: TreeCost, delay_ms: float, rounds: int, seed: int) -> None:
    """`rounds` edge rounds: the shaper chooses, the table decides the path, the cost the compute."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        tree = shaper.choose(delay_ms, wanted=100)
        path = walk(tree, draw_ranks(ACCEPT, rng.random(ACCEPT.shape[0])))
        compute = cost.round_ms(tree.depth, tree.nodes) * (1.0 + 0.1 * (2.0 * rng.random() - 1.0))
        draft = 0.4 * compute
        shaper.observe(list(tree.parents), path, draft, compute - draft)


@pytest.mark.parametrize("seed", [0, 1])
def test_at_50_ms_auto_learns_a_tree_within_5_percent_of_the_best_shape_and_ahead_of_every_chain(seed):
    shaper = TreeShaper(AUTO, max_depth=8, seed=seed)
    play(shaper, CHEAP_NODES, 50.0, 600, seed)
    chosen = shaper.learner.best(50.0)
    best, best_j = best_shape(ACCEPT, CHEAP_NODES, 50.0, oracle_shapes(ACCEPT, MAX_TREE_NODES))
    _, chain_j = best_shape(ACCEPT, CHEAP_NODES, 50.0, [chain(L) for L in range(1, 9)])
    j = ms_per_token(chosen, ACCEPT, CHEAP_NODES, 50.0)
    assert chosen.width >= 2 and j <= 1.05 * best_j and j < chain_j


@pytest.mark.parametrize("seed", [0, 1])
def test_at_0_ms_where_nodes_cost_more_than_they_bring_auto_falls_back_to_a_chain(seed):
    shaper = TreeShaper(AUTO, max_depth=8, seed=seed)
    play(shaper, DEAR_NODES, 0.0, 400, seed)
    assert shaper.learner.best(0.0).width == 1


def test_auto_never_drafts_deeper_than_the_tokens_still_wanted_nor_larger_than_the_wire_takes():
    shaper = TreeShaper(AUTO, max_depth=8, seed=0)
    play(shaper, CHEAP_NODES, 100.0, 200, 0)
    for wanted in (2, 3, 5):
        assert all(shaper.choose(100.0, wanted).depth <= wanted - 1 for _ in range(50))
    assert shaper.choose(100.0, 1) is None
    assert max(t.nodes for t in shaper.learner.shapes()) <= MAX_TREE_NODES


def test_auto_with_no_rounds_yet_still_answers_with_a_shape_of_the_edges_depth():
    tree = TreeShaper(AUTO, max_depth=4, seed=0).choose(50.0, wanted=100)
    assert 1 <= tree.depth <= 4


def test_a_round_whose_verify_also_prefilled_the_context_teaches_acceptance_but_not_cost():
    shaper = TreeShaper(AUTO, max_depth=8, seed=0)
    play(shaper, CHEAP_NODES, 0.0, 50, 0)
    cost_before, table_before = shaper.learner.costs.cost(), shaper.learner.table.table().copy()
    shaper.observe(list(chain(8).parents), [0, 1, 2, 3, 4, 5, 6, 7], 8.0, 400.0, prefilled=True)
    assert shaper.learner.costs.cost() == cost_before
    assert shaper.learner.table.table()[7, 0] > table_before[7, 0]


def test_one_shape_played_alone_does_not_price_larger_shapes_out_of_reach():
    """Every round of one small shape has the same (depth, nodes, 1): the fixed verify cost it
    measures must not be read as per-depth or per-node cost, or deeper trees look too dear to try."""
    shaper = TreeShaper(AUTO, max_depth=8, seed=0)
    one = chain(1)
    for _ in range(30):
        shaper.learner.observe(one, [0], compute_ms=4.0)
    c = shaper.learner.costs.cost()
    assert c.verify_ms > 2.0 and c.draft_step_ms + c.draft_node_ms + c.verify_node_ms < 1.5


def _is_spine(tree) -> bool:
    spine_nodes = {-1}
    for i, p in enumerate(tree.parents):
        if p in spine_nodes and tree.parents.index(p) == i:  # the first child of a spine node extends it
            spine_nodes.add(i)
    return all(p in spine_nodes for p in tree.parents)


def play_ahead(shaper: TreeShaper, cost: TreeCost, delay_ms: float, rounds: int, seed: int, r: int) -> list:
    """As `play`, with the shapes a round drafted ahead may take (`--tree auto --ahead r`)."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(rounds):
        tree = shaper.choose_ahead(delay_ms, 100, r)
        shapes.append(tree)
        path = walk(tree, draw_ranks(ACCEPT, rng.random(ACCEPT.shape[0])))
        compute = cost.round_ms(tree.depth + 1, tree.nodes + 1)
        shaper.observe(list(tree.parents), path, 0.4 * compute, 0.6 * compute)
    return shapes


def test_rounds_drafted_ahead_under_auto_are_spines_short_of_the_table_and_the_request() -> None:
    shaper = TreeShaper(AUTO, max_depth=8, seed=0)
    shapes = play_ahead(shaper, CHEAP_NODES, 50.0, 300, 0, 3)
    assert all(_is_spine(t) and t.depth <= 7 for t in shapes)  # the table must reach the prediction's depth
    assert all(shaper.choose_ahead(50.0, 2, 3).depth <= 2 for _ in range(20))
    assert shaper.learner.rounds == 300


def test_rounds_drafted_ahead_under_auto_go_deeper_on_a_long_link() -> None:
    near, far = TreeShaper(AUTO, max_depth=8, seed=0), TreeShaper(AUTO, max_depth=8, seed=0)
    play_ahead(near, CHEAP_NODES, 0.0, 400, 1, 3)
    play_ahead(far, CHEAP_NODES, 100.0, 400, 1, 3)
    late = lambda s, d: [s.choose_ahead(d, 100, 3) for _ in range(50)]
    assert np.median([t.depth for t in late(far, 100.0)]) > np.median([t.depth for t in late(near, 0.0)])


def test_choose_ahead_is_for_auto_only() -> None:
    with pytest.raises(Exception, match="choose_ahead is for --tree auto"):
        TreeShaper(chain(3), max_depth=8).choose_ahead(10.0, 100, 2)
