"""Rules of the continuous speculation tree (nodes/protocol/stream_tree.py) and its cost rule
(control/stream_tree_cost.py), without models: best-first growth with whole child groups, pruning
and restarts on verdicts, idempotent messages, bounds."""
import math

import pytest

from control.stream_tree_cost import prefer_stream_tree, stream_tree_ms_per_token
from nodes.protocol.stream_tree import (CloudTree, EdgeTree, Limits, NodesMsg, StreamTreeError, VerdictMsg,
                                        check_nodes_msg, children_count, unseen_part)


def grown(limits: Limits = Limits(), lead_penalty: float = 0.0) -> tuple[EdgeTree, dict[str, int]]:
    """Root r (token 5 at position 9) -> a (7, p .6), b (8, p .3); a -> c (1, p .9), d (2, p .05)."""
    t = EdgeTree(9, 5, limits, lead_penalty)
    r = t.best(1)[0]
    a, b = t.expand(r, [7, 8], [0.6, 0.3])
    assert t.best(1) == [a]
    c, d = t.expand(a, [1, 2], [0.9, 0.05])
    return t, {"r": r, "a": a, "b": b, "c": c, "d": d}


def test_a_node_gets_the_fewest_top_tokens_that_cover_the_cumulative_mass():
    assert children_count([0.5, 0.3, 0.1, 0.1], 3, 0.75) == 2
    assert children_count([0.95, 0.03], 3, 0.8) == 1
    assert children_count([0.4, 0.3, 0.2, 0.1], 3, 0.99) == 3  # capped at the width
    assert children_count([0.4, 0.3], 2, 1.0) == 2


def test_the_frontier_is_expanded_best_first_by_path_probability():
    t, n = grown()
    assert t.best(3) == [n["c"], n["b"], n["d"]]  # .54, .3, .03


def test_an_expansion_is_queued_as_one_group_with_all_its_children():
    t, n = grown()
    assert t.take_outbox() == [(n["r"], ((n["a"], 7), (n["b"], 8))), (n["a"], ((n["c"], 1), (n["d"], 2)))]
    assert t.take_outbox() == []


def test_a_node_is_expanded_once():
    t, n = grown()
    with pytest.raises(StreamTreeError, match="already expanded"):
        t.expand(n["a"], [3], [0.5])


def test_a_full_tree_adds_no_partial_group():
    t, n = grown(Limits(max_nodes=6))
    t.take_outbox()
    assert t.expand(n["c"], [3, 4], [0.5, 0.4]) == []  # 5 nodes, room for 1
    assert t.take_outbox() == [] and n["c"] in t.best(1)


def test_a_verdict_along_the_tree_keeps_only_the_new_roots_subtree():
    t, n = grown()
    c = t.commit([7])
    assert not c.restart and c.path == [n["a"]]
    assert t.root == n["a"] and t.root_pos == 10 and set(t.nodes) == {n["a"], n["c"], n["d"]}
    assert math.isclose(t.nodes[n["c"]].logp, math.log(0.9))  # path probabilities from the new root


def test_unsent_groups_of_pruned_nodes_are_not_sent():
    t, n = grown()
    t.take_outbox()
    t.expand(n["b"], [3], [0.9])
    t.commit([7])
    assert t.take_outbox() == []


def test_a_verdict_ending_outside_the_tree_restarts_it_at_that_token():
    t, n = grown()
    c = t.commit([7, 4])  # 4 is not a child of a
    assert c.restart and c.path == [n["a"]] and t.restarts == 1
    assert t.root_pos == 11 and t.nodes[t.root].token == 4 and len(t.nodes) == 1
    assert t.root not in n.values()  # ids are never reused


def test_a_verdict_that_leaves_the_tree_before_its_last_token_restarts_at_the_last():
    t, n = grown()
    c = t.commit([7, 4, 3, 6])  # the cloud filled past the tree after a
    assert c.restart and c.path == [n["a"]]
    assert t.root_pos == 13 and t.nodes[t.root].token == 6 and len(t.nodes) == 1


def test_nodes_short_of_the_clouds_lead_rank_below_deeper_ones():
    t, n = grown(lead_penalty=1.0)
    deep = t.expand(n["c"], [3], [0.5])[0]  # depth 3, path .27 < b's .3
    t.set_lead(3.0)  # b (depth 1) is 2 tokens short of where the cloud will be
    assert t.best(1) == [deep]


def test_nodes_below_the_minimum_path_probability_wait_but_the_root_never_does():
    t, n = grown()
    assert t.best(5, min_logp=math.log(0.2)) == [n["c"], n["b"]]
    fresh = EdgeTree(0, 1)
    assert fresh.best(1, min_logp=0.0) == [fresh.root]


def test_a_node_at_the_requests_last_position_is_never_expanded():
    t, n = grown()  # b at position 10; c, d at 11
    assert t.best(5, last_pos=11) == [n["b"]]  # c and d would only propose position 12, past the end
    assert t.best(5, last_pos=11) == []


def test_the_end_is_a_context_position_whatever_the_root():
    t, n = grown()
    t.commit([7])  # the root moves to a (position 10): c and d are at depth 1, still position 11
    assert t.best(5, last_pos=11) == []
    assert t.best(5, last_pos=12) == [n["c"], n["d"]]


def test_a_resend_lists_every_expansion_parents_first():
    t, n = grown()
    assert [g[0] for g in t.all_groups()] == [n["r"], n["a"]]


# --- the cloud's copy -------------------------------------------------------------------------------

def msg(t: EdgeTree, groups) -> NodesMsg:
    return NodesMsg(t.root_msg, tuple(groups))


def test_the_cloud_adopts_the_edges_root_at_its_last_committed_token():
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5])
    adm = cloud.admit(msg(t, t.take_outbox()))
    assert cloud.tip == n["r"] and adm.new == [n["a"], n["b"], n["c"], n["d"]]


def test_groups_under_a_void_tree_are_dropped_as_stale():
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5])
    cloud.admit(msg(t, t.take_outbox()[:1]))
    cloud.advance(n["b"])  # a's subtree is void now
    adm = cloud.admit(msg(t, [(n["a"], ((n["c"], 1), (n["d"], 2)))]))
    assert adm.stale == 1 and adm.new == [] and cloud.context[-1] == 8


def test_a_repeated_group_is_ignored():
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5])
    groups = t.take_outbox()
    cloud.admit(msg(t, groups))
    adm = cloud.admit(msg(t, groups))
    assert adm.duplicate == 2 and adm.new == []


def test_the_cloud_holds_no_more_nodes_than_its_limit():
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5], Limits(max_nodes=3))
    adm = cloud.admit(msg(t, t.take_outbox()))
    assert adm.over_limit == 1 and len(cloud.nodes) == 3


def test_a_miss_commits_the_targets_token_and_leaves_the_tree():
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5])
    cloud.admit(msg(t, t.take_outbox()))
    cloud.advance(n["a"])
    cloud.miss(4)
    assert cloud.tip is None and cloud.nodes == {} and cloud.context[-2:] == [7, 4]
    restarted = EdgeTree(11, 4)  # the edge restarts at the same token: the cloud adopts it
    cloud.admit(NodesMsg(restarted.root_msg, ()))
    assert cloud.tip == restarted.root


def test_a_verdict_is_the_context_from_what_the_edge_holds_and_is_bounded():
    cloud = CloudTree(list(range(10)), Limits(max_verdict_tokens=3))
    assert cloud.verdict(6) == VerdictMsg(6, (6, 7, 8))


def test_old_duplicate_and_overtaken_verdicts_add_nothing():
    assert unseen_part(5, VerdictMsg(3, (1, 2, 3, 4))) == [3, 4]
    assert unseen_part(5, VerdictMsg(3, (1, 2))) == []  # older
    assert unseen_part(5, VerdictMsg(6, (9,))) == []  # cannot be placed: one before it was lost


@pytest.mark.parametrize("groups,root,match", [
    (((1, ((2, 9),)),), (1, 0, 0), "outside"),
    (((1, ((2, 3), (3, 3))),), (1, 0, 0), "repeated"),
    (((4, ((2, 3),)),), (1, 0, 0), "ids only grow"),
    (((1, ()),), (1, 0, 0), "children"),
    ((), (1, -1, 0), "negative position"),
])
def test_malformed_messages_are_refused_in_one_line(groups, root, match):
    with pytest.raises(StreamTreeError, match=match):
        check_nodes_msg(NodesMsg(root, groups), vocab_size=8, limits=Limits())


def test_a_message_with_too_many_groups_is_refused():
    groups = tuple((i, ((i + 100, 0),)) for i in range(3))
    with pytest.raises(StreamTreeError, match="more than 2"):
        check_nodes_msg(NodesMsg((1, 0, 0), groups), 8, Limits(max_groups_per_msg=2))


# --- the cost rule ----------------------------------------------------------------------------------

def test_the_modelled_cost_is_compute_plus_a_round_trip_per_miss():
    assert stream_tree_ms_per_token(5.0, 0.05, 50.0, 100) == pytest.approx(5.0 + 0.06 * 100)


def test_the_chain_is_kept_at_zero_delay_and_the_tree_taken_over_a_long_link():
    # at 0 ms the tree's compute (extra draft work) exceeds the chain's cost
    assert prefer_stream_tree(2.0, 3.0, 0.05, 0.0, 64)[0] is False
    assert prefer_stream_tree(22.0, 3.0, 0.05, 50.0, 64)[0] is True


def filled_cloud(fills: list[int]) -> tuple[EdgeTree, dict[str, int], CloudTree]:
    """The cloud adopts the edge's root r (token 5 at position 9) before any group, then fills."""
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5])
    cloud.admit(msg(t, []))
    for x in fills:
        cloud.fill(x)
    return t, n, cloud


def test_an_idle_tip_is_filled_with_the_targets_token_and_kept_behind():
    _, n, cloud = filled_cloud([7])
    assert cloud.context[-1] == 7 and cloud.tip is None
    assert cloud.behind == n["r"] and cloud.behind_pos == 9


def test_a_tip_with_children_is_not_filled():
    t, n = grown()
    cloud = CloudTree([0] * 9 + [5])
    cloud.admit(msg(t, t.take_outbox()))
    with pytest.raises(StreamTreeError, match="has children to decide"):
        cloud.fill(7)


def test_late_groups_are_followed_along_the_filled_tokens_unjudged_to_the_tip():
    t, n, cloud = filled_cloud([7])
    adm = cloud.admit(msg(t, t.take_outbox()))
    assert adm.followed == 1 and cloud.tip == n["a"] and cloud.behind is None
    assert adm.new == [n["c"], n["d"]]  # only nodes under the tip are left to feed and judge
    assert cloud.context[-1] == 7  # following commits nothing more


def test_a_walk_stops_behind_the_tip_where_groups_have_not_arrived():
    t, n, cloud = filled_cloud([7, 1, 3])
    adm = cloud.admit(msg(t, t.take_outbox()))
    assert adm.followed == 2 and cloud.tip is None and cloud.behind == n["c"] and cloud.behind_pos == 11
    assert adm.new == [] and set(cloud.nodes) == {n["c"]}


def test_a_child_set_without_the_filled_token_is_void():
    t, n, cloud = filled_cloud([8 + 1])  # 9 is neither a nor b
    adm = cloud.admit(msg(t, t.take_outbox()))
    assert adm.void and cloud.nodes == {} and cloud.tip is None and cloud.behind is None and adm.new == []


def test_a_restarted_root_behind_the_tip_is_walked_along_the_filled_tokens():
    t, _, cloud = filled_cloud([8 + 1])
    assert cloud.admit(msg(t, t.take_outbox())).void
    cloud.fill(2)
    cloud.fill(6)  # context: ... 5 @9, 9 @10, 2 @11, 6 @12
    restarted = EdgeTree(10, 9)  # the edge restarted at the first fill's token
    r = restarted.best(1)[0]
    (x,) = restarted.expand(r, [2], [0.9])
    y, z = restarted.expand(x, [6, 1], [0.5, 0.4])
    adm = cloud.admit(msg(restarted, restarted.take_outbox()))
    assert cloud.tip == y and adm.followed == 2 and adm.new == []


def test_a_root_off_the_committed_path_is_not_adopted():
    _, _, cloud = filled_cloud([7, 1])
    cloud.admit(NodesMsg((50, 10, 8), ()))  # position 10 holds 7
    assert cloud.behind != 50 and 50 not in cloud.nodes
