"""Tree drafts on the wire (versioned, refused cleanly by a chain-only peer) and the
exactly-once rules of tree rounds, without a broker."""
import msgpack
import pytest

from nodes.protocol.tree import CACHED, COMPUTE, RESEND_CONTEXT, WAIT, TreeEdge, TreeRounds, TreeVerdict
from schemas.codec import SchemaError, decode
from schemas.trees import TREE_SCHEMA_VERSION, TreeDraftMsg, decode_tree, encode_tree

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
