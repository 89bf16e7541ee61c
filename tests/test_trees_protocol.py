"""Tree drafts on the wire (versioned, refused cleanly by a chain-only peer) and the
exactly-once rules of tree rounds, without a broker."""
import msgpack
import pytest

from control import RoundContext, make_policy
from control.trees import spine
from nodes.protocol.request import Accepted, EdgeRequest, Failed, RoundRules, RoundTimes
from nodes.protocol.tree import (CACHED, COMPUTE, RESEND_CONTEXT, WAIT, TreeEdge, TreeRounds, TreeVerdict, feed_parents,
                                 path_error)
from nodes.protocol.tree_shape import AUTO, TreeShaper, parse_tree
from nodes.protocol.verifier_table import Outcome, SessionTable, TableConfig
from schemas.codec import Int32Array, SchemaError, decode, encode
from schemas.messages import GenerateRequest, VerdictMsg
from schemas.rounds import Draft
from schemas.trees import TREE_SCHEMA_VERSION, TreeDraftMsg, decode_tree, encode_round, encode_tree

MSG = TreeDraftMsg("edge-1", "req-1", 3, 0, 7, [5, 9, 11, 2], [-1, -1, 0, 2])
V = TreeVerdict((1, 3), (5, 11, 40))


def test_a_tree_draft_round_trips():
    assert decode_tree(encode_tree(MSG)) == MSG


def test_a_chain_only_peer_refuses_a_tree_draft_with_a_version_error():
    with pytest.raises(SchemaError, match="schema version 2 is not supported") as e:
        decode(encode_tree(MSG))
    assert e.value.code == "version"


def test_a_tree_decoder_refuses_a_message_of_another_version():
    body = msgpack.unpackb(encode_tree(MSG))
    body["v"] = TREE_SCHEMA_VERSION - 1
    with pytest.raises(SchemaError) as e:
        decode_tree(msgpack.packb(body))
    assert e.value.code == "version"


@pytest.mark.parametrize("parents,match", [([-1, 1, 0, 2], "node 1 has parent 1"), ([-1, -1, 0], "4 tokens but 3")])
def test_a_malformed_tree_is_refused_naming_what_is_wrong(parents, match):
    bad = TreeDraftMsg("edge-1", "req-1", 3, 0, 7, [5, 9, 11, 2], parents)
    with pytest.raises(SchemaError, match=match):
        decode_tree(encode_tree(bad))


def test_a_round_is_computed_once_and_its_retries_get_the_same_verdict():
    t = TreeRounds()
    assert t.admit("e", "r", 0) == (COMPUTE, None)
    assert t.admit("e", "r", 0) == (WAIT, None)       # retry while in flight
    t.finish("e", "r", 0, V)
    assert t.admit("e", "r", 0) == (CACHED, V)        # retry after: cached, not recomputed
    assert t.admit("e", "r", 1) == (COMPUTE, None)


def test_a_round_out_of_order_asks_for_the_context():
    t = TreeRounds()
    assert t.admit("e", "r", 2)[0] == RESEND_CONTEXT
    assert t.admit("other-edge", "r", 0)[0] == COMPUTE  # another edge's request is another session


def test_finishing_a_round_never_admitted_is_an_error():
    with pytest.raises(ValueError, match="not admitted"):
        TreeRounds().finish("e", "r", 0, V)


def test_the_edge_applies_a_verdict_once():
    e = TreeEdge()
    r = e.send()
    assert e.apply(r, V) is True
    assert e.apply(r, V) is False     # duplicate delivery
    assert e.tokens == [5, 11, 40]


# --- tree rounds through the chain rounds' machinery (EdgeRequest, SessionTable) ---------------------

TREE = Draft([5, 9, 11, 2], 0, parents=[-1, -1, 1, 1])


def _tree_request() -> EdgeRequest:
    r = EdgeRequest(GenerateRequest("r1", prompt="x", max_new_tokens=16), [7, 8], RoundRules("edge-a"), "fixed:3")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(TREE, 0.0)
    return r


def _verdict(r: EdgeRequest, path, nxt: int = 40, attempt: int | None = None) -> VerdictMsg:
    return VerdictMsg("r1", r.round, r.attempt if attempt is None else attempt, len(path), nxt, 3.0, 0.5, "cloud-1",
                      path=Int32Array(path))


def test_an_accepted_tree_path_emits_its_nodes_tokens_then_the_targets():
    r = _tree_request()
    step = r.on_verdict(_verdict(r, [1, 3]), 0.0)
    assert isinstance(step, Accepted)
    rec = r.complete(step.verdict, RoundTimes(40.0, 10.0, 1.0, 20.0), None, 0.0, 1)
    assert rec.new_tokens == [9, 2, 40] and r.context == [7, 8, 9, 2, 40]


@pytest.mark.parametrize("path,why", [([2], "not a child of the root"), ([1, 0], "not a child of node 1"),
                                      ([1, 7], "names node 7"), (None, "with a chain verdict")])
def test_a_verdict_whose_path_is_not_in_the_sent_tree_fails_the_round(path, why):
    r = _tree_request()
    v = _verdict(r, path) if path is not None else VerdictMsg("r1", 0, 0, 1, 40, 3.0, 0.5, "cloud-1")
    step = r.on_verdict(v, 0.0)
    assert isinstance(step, Failed) and step.code == "bad_message" and why in step.message


def test_a_verdict_for_another_attempt_is_not_applied():
    r = _tree_request()
    step = r.on_verdict(_verdict(r, [1], attempt=1), 0.0)
    assert not isinstance(step, Accepted) and r.context == [7, 8]


def test_a_tree_round_goes_out_as_a_v2_tree_draft_and_a_chain_round_as_v1():
    r = _tree_request()
    tree = decode_tree(encode_round(r._pending, r.tree_parents))
    assert tree.parents == [-1, -1, 1, 1] and tree.context == [7, 8] and tree.to_draft_msg().tokens == TREE.tokens
    assert encode_round(r._pending, None) == encode(r._pending)


def test_a_chain_verdict_on_the_wire_has_no_path_field():
    body = msgpack.unpackb(encode(VerdictMsg("r1", 0, 0, 1, 40, 3.0, 0.5, "cloud-1")))
    assert "path" not in body


def test_the_verifier_table_applies_a_tree_path_once_and_resends_it_to_a_retry():
    t = SessionTable(TableConfig("cloud-1"))
    m = TreeDraftMsg("edge-a", "r1", 0, 0, 1, [5, 9, 11, 2], [-1, -1, 1, 1], context=[7, 8], session="n")
    adm = t.admit(m.to_draft_msg(), "inbox-0", 0.0, parents=tuple(m.parents))
    [reply] = t.finish(adm.compute.session, Outcome(2, 40, 1.0, 0.0, path=[1, 3]), "state", 0.0)
    again = t.admit(TreeDraftMsg("edge-a", "r1", 0, 1, 1, [5, 9, 11, 2], [-1, -1, 1, 1], session="n").to_draft_msg(),
                    "inbox-1", 0.0, parents=(-1, -1, 1, 1))
    assert list(reply.msg.path) == [1, 3] and adm.compute.session.tokens == [7, 8, 9, 2, 40]
    assert again.event == "verdict_resent" and list(again.replies[0].msg.path) == [1, 3]
    assert adm.compute.session.tokens == [7, 8, 9, 2, 40]


def test_a_retry_with_another_tree_shape_is_a_conflict():
    t = SessionTable(TableConfig("cloud-1"))
    m = TreeDraftMsg("edge-a", "r1", 0, 0, 1, [5, 9], [-1, -1], context=[7, 8], session="n")
    t.admit(m.to_draft_msg(), "inbox-0", 0.0, parents=(-1, -1))
    other = t.admit(m.to_draft_msg(), "inbox-1", 0.0, parents=(-1, 0))
    assert other.event == "conflict"


def test_the_verify_feed_hangs_the_tree_below_the_pending_token():
    assert feed_parents([-1, -1, 1], pending=1) == [-1, 0, 0, 2]
    assert path_error([-1, -1, 1], [1, 2]) is None


def test_a_fixed_tree_is_cut_to_the_tokens_still_wanted():
    shaper = TreeShaper(spine(5, 2), max_depth=8)
    assert shaper.choose(50.0, 100) == spine(5, 2) and shaper.choose(0.0, 4) == spine(3, 2)
    assert shaper.choose(0.0, 1) is None  # the target's own token is the last one wanted


def test_a_bad_tree_option_names_the_expected_form():
    with pytest.raises(Exception, match="DEPTHxWIDTH"):
        parse_tree("4by2")


def test_a_tree_rounds_timing_event_carries_its_depth_and_is_checked_as_a_tree():
    from dataclasses import replace

    from schemas.codec import Limits
    from schemas.messages import TimingEvent
    ev = TimingEvent("edge-1", "r", 0, 0, 24, 5, 130.0, 12.0, 9.0, 0.1, 108.9, 50.0, "auto", 0, tree_depth=8)
    assert decode(encode(ev), Limits(max_draft_length=8)) == ev  # 24 nodes: not bound by the chains' limit
    with pytest.raises(SchemaError, match="tree_depth"):
        decode(encode(replace(ev, accepted=9, tokens=0)), Limits(max_draft_length=8))  # a path past the depth
    chain_ev = replace(ev, length=4, accepted=2, tokens=3, tree_depth=None)
    assert "tree_depth" not in msgpack.unpackb(encode(chain_ev))  # chain events unchanged on the wire
