"""Heartbeat rules without a broker: who is gone and when (nodes/protocol/liveness.py), and what the
verifier's session table does with a gone edge (drop_edge)."""
from __future__ import annotations

import pytest

from nodes.protocol.liveness import HolderWatch, PeerTable, keepalive_due
from nodes.protocol.verifier_table import SessionTable, TableConfig
from schemas.codec import Int32Array
from schemas.messages import DraftMsg


def test_a_peer_heard_once_then_silent_past_the_window_is_gone_and_reported_once():
    t = PeerTable(window_s=3.0)
    t.heard("e1", 0.0)
    assert t.newly_gone(2.9) == [] and t.alive(2.9) == ["e1"]
    assert [n for n, _ in t.newly_gone(3.5)] == ["e1"]
    assert t.newly_gone(10.0) == [] and t.alive(10.0) == []


def test_a_peer_never_heard_is_never_judged():
    t = PeerTable(window_s=3.0)
    assert not t.is_gone("old-edge", 1e6) and not t.avoid("old-edge", 1e6) and t.newly_gone(1e6) == []


def test_a_gone_peer_heard_again_is_alive_and_can_be_reported_gone_again():
    t = PeerTable(window_s=3.0)
    t.heard("v1", 0.0)
    assert t.newly_gone(4.0)
    assert t.heard("v1", 5.0) is True and t.alive(5.0) == ["v1"]
    assert [n for n, _ in t.newly_gone(9.0)] == ["v1"]


def test_silence_is_counted_from_our_own_reconnect_not_across_our_outage():
    t = PeerTable(window_s=3.0)
    t.heard("e1", 0.0)
    assert t.newly_gone(10.0, since=9.0) == []          # we were cut off until 9.0
    assert [n for n, _ in t.newly_gone(12.5, since=9.0)] == ["e1"]


def test_a_draining_peer_is_alive_but_not_usable():
    t = PeerTable(window_s=3.0)
    t.heard("v1", 0.0, draining=True)
    t.heard("v2", 0.0)
    assert t.alive(1.0) == ["v1", "v2"] and t.usable(1.0) == ["v2"] and t.avoid("v1", 1.0)


def test_the_table_is_bounded_and_drops_the_stalest():
    t = PeerTable(window_s=3.0, cap=3)
    for i in range(5):
        t.heard(f"e{i}", float(i))
    t.heard("e2", 9.0)
    t.heard("e9", 9.0)
    assert list(t.peers) == ["e4", "e2", "e9"]


def test_long_silent_peers_are_forgotten():
    t = PeerTable(window_s=3.0)
    t.heard("a", 0.0)
    t.heard("b", 50.0)
    assert t.prune(70.0, 60.0) == ["a"] and list(t.peers) == ["b"]


def test_a_bad_window_is_refused():
    with pytest.raises(ValueError, match="window"):
        PeerTable(window_s=0.0)


def draft(edge: str, rid: str, rnd: int = 0, context=(1, 2, 3)) -> DraftMsg:
    return DraftMsg(rid, rnd, 0, edge, Int32Array([4]), 0, context=None if context is None else Int32Array(context),
                    session="s")


def test_a_gone_edge_loses_every_session_and_a_computing_round_still_answers():
    released = []
    t = SessionTable(TableConfig("v"), release=released.append)
    idle = t.admit(draft("gone", "r1"), "inbox-1", 0.0).compute
    t.finish(idle.session, _outcome(), "state-1", 0.1)
    busy = t.admit(draft("gone", "r2"), "inbox-2", 0.2).compute
    other = t.admit(draft("alive", "r3"), "inbox-3", 0.2).compute
    assert sorted(k[1] for k in t.drop_edge("gone")) == ["r1", "r2"]
    assert released == ["state-1"] and set(k[1] for k in t.sessions) == {"r3"}
    replies = t.finish(busy.session, _outcome(), "state-2", 0.3)  # computed after the drop
    assert [r.to for r in replies] == ["inbox-2"] and released == ["state-1", "state-2"]
    assert other.session.key in t.sessions


def test_a_wrongly_dropped_edge_rebuilds_its_session_from_the_context():
    t = SessionTable(TableConfig("v"))
    c = t.admit(draft("slow", "r1"), "i", 0.0).compute
    t.finish(c.session, _outcome(), "st", 0.1)
    t.drop_edge("slow")
    assert t.admit(draft("slow", "r1", 1, None), "i", 0.2).event == "resend_context"
    again = t.admit(draft("slow", "r1", 1, (1, 2, 3, 4, 9)), "i", 0.3)
    assert again.event == "compute" and again.compute.rebuild


def _outcome():
    from nodes.protocol.verifier_table import Outcome

    return Outcome(1, 9, 1.0, 0.0)


def test_the_gateway_answers_edge_gone_with_503_naming_it():
    from pipeline.http.errors import from_edge

    err = from_edge("edge_gone", "the edge holding this request stopped answering")
    assert (err.status, err.code) == (503, "edge_gone") and "stopped answering" in err.message


def test_a_client_sent_nothing_for_about_a_heartbeat_gets_a_keepalive_and_one_just_served_does_not():
    assert keepalive_due(last_sent=10.0, now=10.95, period_s=1.0)  # a tick that fires a little early still counts
    assert not keepalive_due(last_sent=10.0, now=10.5, period_s=1.0)


def test_a_silent_verifier_concerns_the_rounds_it_holds_and_those_sent_to_the_queue_group():
    watch: HolderWatch[str] = HolderWatch()
    watch.add("cloud-1", "a")
    watch.add("cloud-2", "b")
    watch.add(None, "q")
    assert watch.gone("cloud-1") == {"a", "q"} and watch.gone("cloud-3") == {"q"}
    watch.discard("cloud-1", "a")
    watch.discard(None, "q")
    assert watch.gone("cloud-1") == set() and watch.gone("cloud-2") == {"b"}

