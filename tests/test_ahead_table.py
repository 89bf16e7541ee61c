"""Rounds drafted ahead at the verifier's session table and on the wire, without a broker or a model."""
from __future__ import annotations

import msgpack
import pytest

from nodes.protocol.pipelining import CloudWindow
from nodes.protocol.verifier_table import Outcome, SessionTable, TableConfig
from schemas.ahead import AheadDraftMsg, decode_ahead, encode_ahead
from schemas.codec import Int32Array, Limits, SchemaError, encode
from schemas.messages import DraftMsg, ErrorMsg, VerdictMsg

CFG = TableConfig("cloud-1", max_sessions=4, max_ahead=2)


def draft(rnd: int, tokens=(1, 2), context=None) -> DraftMsg:
    return DraftMsg("r1", rnd, 0, "edge-a", Int32Array(tokens), rnd,
                    context=None if context is None else Int32Array(context))


def opened(cfg: TableConfig = CFG):
    """A table whose session has round 0 (tokens 1, 2) in flight."""
    t = SessionTable(cfg)
    adm = t.admit(draft(0, context=(7, 8, 9)), "in0", 0.0)
    assert adm.compute is not None
    return t, adm.compute.session


def finish(t: SessionTable, s, accepted: int, nxt: int):
    return t.finish(s, Outcome(accepted, nxt, 1.0, 0.0), "state", 1.0)


def test_a_round_drafted_ahead_waits_behind_its_round_without_compute():
    t, s = opened()
    adm = t.admit(draft(1, (3,)), "in1", 0.1, assumed_next=5)
    assert adm.event == "queued_ahead" and adm.compute is None and adm.replies == []


def test_a_kept_round_starts_the_one_drafted_ahead_on_it():
    t, s = opened()
    t.admit(draft(1, (3,)), "in1", 0.1, assumed_next=5)
    finish(t, s, accepted=2, nxt=5)  # all accepted, the target's next token is the assumed one
    adm = t.take_ahead(s, 1.0)
    assert adm.compute is not None and adm.compute.msg.round == 1 and not adm.compute.rebuild
    assert s.tokens == [7, 8, 9, 1, 2, 5] and [w.reply_to for w in s.in_flight.waiters] == ["in1"]


@pytest.mark.parametrize("accepted,nxt", [(1, 5), (2, 6)])
def test_a_round_not_kept_voids_every_round_drafted_ahead_on_it(accepted, nxt):
    t, s = opened()
    t.admit(draft(1, (3,)), "in1", 0.1, assumed_next=5)
    t.admit(draft(2, (4,)), "in2", 0.1, assumed_next=6)
    finish(t, s, accepted, nxt)
    adm = t.take_ahead(s, 1.0)
    assert adm.compute is None and s.in_flight is None and s.ahead == []
    assert {(r.to, r.msg.code) for r in adm.replies} == {("in1", "voided"), ("in2", "voided")}


def test_a_session_holds_at_most_max_ahead_rounds_drafted_ahead():
    t, s = opened()
    t.admit(draft(1, (3,)), "in1", 0.1, assumed_next=5)
    t.admit(draft(2, (4,)), "in2", 0.1, assumed_next=6)
    adm = t.admit(draft(3, (5,)), "in3", 0.1, assumed_next=7)
    assert adm.event == "overloaded" and "max_ahead=2" in adm.replies[0].msg.message


def test_an_earlier_round_resent_after_later_ones_is_answered_from_the_record():
    t, s = opened()
    t.admit(draft(1, (3,)), "in1", 0.1, assumed_next=5)
    finish(t, s, 2, 5)
    finish(t, t.take_ahead(s, 1.0).compute.session, 1, 9)
    adm = t.admit(draft(0), "again", 2.0)  # round 0's verdict was lost; round 1 is verified already
    assert adm.event == "verdict_resent" and adm.compute is None
    [reply] = adm.replies
    assert isinstance(reply.msg, VerdictMsg) and (reply.msg.round, reply.msg.next_token) == (0, 5)


def test_a_verifier_without_rounds_ahead_answers_version():
    t, s = opened(TableConfig("cloud-1", max_ahead=0))
    adm = t.admit(draft(1, (3,)), "in1", 0.1, assumed_next=5)
    assert isinstance(adm.replies[0].msg, ErrorMsg) and adm.replies[0].msg.code == "version"
    assert "without --ahead" in adm.replies[0].msg.message


def test_the_cloud_window_remembers_a_bounded_number_of_verdicts():
    w = CloudWindow(keep=2)
    for r in range(5):
        w.record(r, 2, 2, 7)
    assert len(w._done) == 2


# --- the wire ---------------------------------------------------------------------------------------

def test_a_round_drafted_ahead_round_trips_with_its_basis():
    msg = AheadDraftMsg(draft(3, (4, 5)), 9)
    back = decode_ahead(encode_ahead(msg))
    assert back.parent == 2 and back.assumed_next == 9 and list(back.draft.tokens) == [4, 5]


def _packed(**over) -> bytes:
    body = {"v": 3, "t": "ahead_draft", "draft": encode(draft(3, (4,))), "parent": 2, "assumed_next": 9} | over
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("over,code,words", [
    ({"v": 4}, "version", "schema version 4 is not supported"),
    ({"parent": 1}, "bad_message", "basis round 1 is not the round before round 3"),
    ({"assumed_next": 300}, "bad_message", "assumed_next 300 is not a token id"),
    ({"draft": encode(draft(3, (4,), context=(1, 2)))}, "bad_message", "no context"),
])
def test_a_bad_round_drafted_ahead_is_refused_in_one_line(over, code, words):
    with pytest.raises(SchemaError) as err:
        decode_ahead(_packed(**over), Limits(vocab_size=258))
    assert err.value.code == code and words in str(err.value) and "\n" not in str(err.value)


def test_a_tree_round_is_kept_when_its_whole_spine_and_the_next_token_hold():
    t = SessionTable(CFG)
    tree = (-1, -1, 0, 0)  # 2x2: nodes 0 and 1 under the root, 2 and 3 under node 0 (the spine is 0, 2)
    adm = t.admit(draft(0, (1, 2, 3, 4), context=(7, 8, 9)), "in0", 0.0, parents=tree)
    s = adm.compute.session
    t.admit(draft(1, (5,)), "in1", 0.1, assumed_next=6)
    t.finish(s, Outcome(2, 6, 1.0, 0.0, path=[0, 2]), "state", 1.0)
    assert t.take_ahead(s, 1.0).compute is not None and s.tokens == [7, 8, 9, 1, 3, 6]


def test_a_tree_round_drafted_ahead_round_trips_with_its_shape():
    msg = AheadDraftMsg(draft(3, (4, 5, 6)), 9, (-1, -1, 0))
    back = decode_ahead(encode_ahead(msg), Limits(vocab_size=258))
    assert back.parents == (-1, -1, 0) and list(back.draft.tokens) == [4, 5, 6] and back.assumed_next == 9
