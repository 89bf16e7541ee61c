"""The verifier's session table, without a broker or a model: one rule per test."""
from __future__ import annotations

from dataclasses import replace

import pytest

from nodes.protocol.verifier_table import Outcome, SessionTable, TableConfig, sender_mismatch
from schemas.codec import Float32Array, Int32Array, Limits
from schemas.messages import AckMsg, DraftMsg, ErrorMsg, VerdictMsg

CFG = TableConfig("cloud-1", max_sessions=2, session_ttl_s=60.0, evict_idle_s=5.0, max_sessions_per_edge=2)


def draft(rid="r1", rnd=0, attempt=0, tokens=(1, 2), context=(7, 8, 9), edge="edge-a", **kw) -> DraftMsg:
    return DraftMsg(rid, rnd, attempt, edge, Int32Array(tokens), 0,
                    context=None if context is None else Int32Array(context), **kw)


def compute(table, msg, reply="inbox", now=0.0, accepted=1, nxt=42):
    """Admit and finish one round as the worker would: the replies it sends."""
    adm = table.admit(msg, reply, now)
    assert adm.compute is not None, adm
    return table.finish(adm.compute.session, Outcome(accepted, nxt, 3.0, 0.1), "model-state", now)


def test_a_first_round_with_its_context_builds_a_session_and_computes():
    t = SessionTable(CFG)
    adm = t.admit(draft(), "inbox", 0.0)
    assert adm.event == "compute" and adm.compute.rebuild and adm.compute.session.tokens == [7, 8, 9]


def test_the_next_round_reuses_the_session_and_extends_its_context():
    t = SessionTable(CFG)
    compute(t, draft(tokens=(1, 2)), accepted=1, nxt=42)
    adm = t.admit(draft(rnd=1, context=None, tokens=(5,)), "inbox", 1.0)
    assert adm.event == "compute" and not adm.compute.rebuild
    assert adm.compute.session.tokens == [7, 8, 9, 1, 42]


def test_a_retry_of_the_round_in_flight_waits_for_it_and_gets_the_same_verdict():
    t = SessionTable(CFG)
    first = t.admit(draft(), "inbox-0", 0.0)
    retry = t.admit(draft(attempt=1), "inbox-1", 1.0)
    resent = t.admit(draft(attempt=2), "inbox-2", 2.0)  # with the context again, as after a failover
    assert retry.event == resent.event == "joined_in_flight" and retry.compute is None and not retry.replies
    replies = t.finish(first.compute.session, Outcome(1, 42, 3.0, 0.0), "state", 3.0)
    assert [(r.to, r.msg.attempt) for r in replies] == [("inbox-0", 0), ("inbox-1", 1), ("inbox-2", 2)]
    assert {(r.msg.accepted, r.msg.next_token) for r in replies} == {(1, 42)}
    assert t.rounds == 1 and t.sessions[("edge-a", "r1", "")].next_round == 1


def test_a_retry_of_the_round_last_applied_gets_the_cached_verdict_and_nothing_is_applied_again():
    t = SessionTable(CFG)
    [reply] = compute(t, draft(), accepted=2, nxt=42)
    adm = t.admit(draft(attempt=3, context=None), "late", 5.0)
    assert adm.event == "verdict_resent" and adm.compute is None
    assert adm.replies[0].msg == VerdictMsg("r1", 0, 3, 2, 42, reply.msg.verify_ms, reply.msg.queue_ms, "cloud-1",
                                            reply.msg.verify_real_ms)
    assert t.rounds == 1 and t.sessions[("edge-a", "r1", "")].tokens == [7, 8, 9, 1, 2, 42]


def test_the_same_round_with_another_draft_is_a_conflict():
    t = SessionTable(CFG)
    t.admit(draft(tokens=(1, 2)), "a", 0.0)
    adm = t.admit(draft(tokens=(3, 4), attempt=1), "b", 0.0)
    assert adm.event == "conflict" and adm.replies[0].msg.code == "conflict"


def test_a_round_for_a_session_not_held_asks_for_the_context():
    adm = SessionTable(CFG).admit(draft(rnd=4, context=None), "inbox", 0.0)
    assert adm.event == "resend_context" and isinstance(adm.replies[0].msg, ErrorMsg)


def test_a_round_out_of_order_asks_for_the_context():
    t = SessionTable(CFG)
    compute(t, draft())
    adm = t.admit(draft(rnd=3, context=None), "inbox", 1.0)
    assert adm.event == "resend_context" and "out of order" in adm.detail


def test_another_edge_reusing_a_request_id_never_touches_the_live_session():
    t = SessionTable(CFG)
    compute(t, draft(edge="edge-a"))
    held = t.sessions[("edge-a", "r1", "")]
    adm = t.admit(draft(edge="edge-b", context=(1, 1, 1)), "inbox", 1.0)
    assert adm.event == "compute" and adm.compute.session is not held
    assert t.sessions[("edge-a", "r1", "")] is held and held.tokens == [7, 8, 9, 1, 42]


def test_the_owners_context_for_the_next_round_reuses_the_cache_when_it_matches():
    t = SessionTable(CFG)
    compute(t, draft(), accepted=1, nxt=42)
    adm = t.admit(draft(rnd=1, context=(7, 8, 9, 1, 42), tokens=(3,)), "inbox", 1.0)
    assert adm.event == "compute" and not adm.compute.rebuild


def test_the_owners_differing_context_rebuilds_its_session():
    t = SessionTable(CFG)
    compute(t, draft())
    adm = t.admit(draft(rnd=5, context=(1, 2, 3)), "inbox", 1.0)
    assert adm.compute.rebuild and t.sessions[("edge-a", "r1", "")].tokens == [1, 2, 3]


def test_at_the_cap_with_every_session_busy_a_new_one_is_refused_as_overloaded():
    t = SessionTable(CFG)
    t.admit(draft("a"), "x", 0.0)
    t.admit(draft("b"), "x", 0.0)
    adm = t.admit(draft("c"), "x", 100.0)  # both still in flight
    assert adm.event == "overloaded" and len(t.sessions) == 2


def test_at_the_cap_the_least_recently_used_idle_session_makes_room():
    t = SessionTable(CFG)
    compute(t, draft("a"), now=0.0)
    compute(t, draft("b"), now=1.0)
    adm = t.admit(draft("c"), "x", 10.0)
    assert adm.event == "compute" and adm.evicted == ("edge-a", "a", "") and set(t.sessions) == {
        ("edge-a", "b", ""), ("edge-a", "c", "")}


def test_a_recently_used_session_is_not_evicted():
    t = SessionTable(CFG)
    compute(t, draft("a"), now=0.0)
    compute(t, draft("b"), now=0.0)
    assert t.admit(draft("c"), "x", 1.0).event == "overloaded"


def test_the_cap_holds_however_many_new_sessions_arrive_before_any_compute_ends():
    t = SessionTable(CFG)
    events = [t.admit(draft(f"s{i}"), "x", 0.0).event for i in range(50)]
    assert len(t.sessions) == CFG.max_sessions and events.count("compute") == 2


def test_a_final_message_ends_the_session_and_is_acknowledged():
    t = SessionTable(CFG)
    compute(t, draft())
    adm = t.admit(draft(rnd=1, tokens=(), context=None, final=True), "inbox", 1.0)
    assert adm.event == "session_end" and isinstance(adm.replies[0].msg, AckMsg) and not t.sessions


def test_a_final_message_during_a_round_ends_the_session_after_it():
    t = SessionTable(CFG)
    first = t.admit(draft(), "inbox", 0.0)
    t.admit(draft(rnd=1, tokens=(), context=None, final=True), None, 0.5)
    assert t.sessions
    replies = t.finish(first.compute.session, Outcome(0, 1, 1.0, 0.0), "state", 1.0)
    assert replies and not t.sessions


def test_draining_refuses_new_work_but_answers_rounds_in_flight_and_cached_verdicts():
    t = SessionTable(CFG)
    compute(t, draft("done"))
    running = t.admit(draft("busy"), "a", 0.0)
    t.begin_drain()
    assert t.admit(draft("new"), "x", 1.0).event == "draining"
    assert t.admit(draft("done", rnd=1, context=None), "x", 1.0).event == "draining"
    assert t.admit(draft("done", attempt=1, context=None), "x", 1.0).event == "verdict_resent"
    assert t.admit(draft("busy", attempt=1), "b", 1.0).event == "joined_in_flight"
    assert len(t.finish(running.compute.session, Outcome(0, 1, 1.0, 0.0), "s", 2.0)) == 2


def test_a_failed_computation_answers_every_waiter_and_drops_the_session():
    t = SessionTable(CFG)
    first = t.admit(draft(), "a", 0.0)
    t.admit(draft(attempt=1), "b", 0.0)
    replies = t.finish(first.compute.session, RuntimeError("boom"), None, 1.0)
    assert [r.msg.code for r in replies] == ["internal", "internal"] and not t.sessions


def test_idle_sessions_expire_but_never_one_with_a_round_in_flight():
    t = SessionTable(CFG)
    compute(t, draft("idle"), now=0.0)
    t.admit(draft("busy"), "x", 0.0)
    assert t.expire(1000.0) == [("edge-a", "idle", "")] and set(t.sessions) == {("edge-a", "busy", "")}


def test_sampling_parameters_cannot_change_within_a_session():
    t = SessionTable(CFG)
    compute(t, draft())
    adm = t.admit(draft(rnd=1, context=None, temperature=0.5, top_k=1, q_ids=Int32Array([1, 2]),
                        q_probs=None), "x", 1.0)
    assert adm.event == "bad_message"


def test_a_target_only_round_after_sampled_drafts_is_the_same_session():
    # a sampled draft sends its q rows cut to top_k; an empty draft (the last token of a request) has none
    t = SessionTable(CFG)
    compute(t, draft(temperature=1.0, top_k=2, q_ids=Int32Array([1, 3, 2, 3]), q_probs=Float32Array([.6, .4, .7, .3])))
    adm = t.admit(draft(rnd=1, context=None, tokens=(), temperature=1.0), "x", 1.0)
    assert adm.event == "compute"


def test_a_context_that_would_grow_past_the_limit_is_refused():
    t = SessionTable(CFG, Limits(max_context_tokens=4))
    assert t.admit(draft(context=(1, 2, 3)), "x", 0.0).event == "too_long"


def test_messages_without_a_reply_subject_get_no_reply():
    t = SessionTable(CFG)
    assert t.admit(draft(rnd=2, context=None), None, 0.0).replies == []


def test_a_reused_request_id_with_a_new_nonce_never_gets_the_old_verdict():
    t = SessionTable(CFG)
    compute(t, draft(tokens=(), context=(1, 2, 3), session="old"), accepted=0, nxt=77)
    adm = t.admit(draft(tokens=(), context=(9, 9, 9, 9), session="new"), "x", 1.0)
    assert adm.event == "compute" and adm.compute.session.tokens == [9, 9, 9, 9]


def test_a_retry_with_another_context_is_not_answered_from_the_cache():
    t = SessionTable(CFG)
    compute(t, draft(tokens=(), context=(1, 2, 3)), accepted=0, nxt=77)
    adm = t.admit(draft(tokens=(), context=(9, 9, 9, 9), attempt=1), "x", 1.0)
    assert adm.event == "compute" and adm.compute.rebuild and adm.compute.session.tokens == [9, 9, 9, 9]


def test_attempts_waiting_on_one_round_are_bounded_and_never_doubled():
    from nodes.protocol.verifier_table import MAX_WAITERS

    t = SessionTable(CFG)
    first = t.admit(draft(), "inbox-0", 0.0)
    t.admit(draft(attempt=1), "inbox-0", 0.0)  # the same reply subject again: not a second waiter
    events = [t.admit(draft(attempt=i + 2), f"inbox-{i + 1}", 0.0).event for i in range(MAX_WAITERS + 3)]
    assert len(first.compute.session.in_flight.waiters) == MAX_WAITERS and events[-1] == "overloaded"


def test_a_draft_overtaken_by_its_final_message_does_not_rebuild_the_session():
    t = SessionTable(CFG)
    t.admit(draft(rnd=0, tokens=(), context=None, final=True), None, 0.0)
    adm = t.admit(draft(), "x", 0.5)
    assert adm.compute is None and not t.sessions


class Released(list):
    """A release hook that records what it got (the worker frees a KV-cache slot there)."""

    def __call__(self, state):
        assert state not in self, f"{state} released twice"
        self.append(state)


def finish_with(t, adm, state, now=0.0):
    return t.finish(adm.compute.session, Outcome(0, 1, 1.0, 0.0), state, now)


def test_a_session_state_is_released_once_whenever_the_table_lets_go_of_it():
    rel = Released()
    t = SessionTable(CFG, Limits(max_context_tokens=12), release=rel)
    finish_with(t, t.admit(draft("a"), "x", 0.0), "A", 0.0)
    finish_with(t, t.admit(draft("b"), "x", 1.0), "B", 1.0)
    t.admit(draft("c"), "x", 10.0)  # at the cap: idle a is evicted
    assert rel == ["A"]
    t.expire(1000.0)  # b idles past the TTL (c is in flight: kept)
    assert rel == ["A", "B"]
    assert t.admit(draft("c", rnd=0, attempt=1), "y", 1000.0).event == "joined_in_flight"
    finish_with(t, t.admit(draft("d"), "x", 1000.0), "D")
    t.admit(draft("d", rnd=1, tokens=(), context=None, final=True), None, 1001.0)  # ends idle d
    assert rel == ["A", "B", "D"]
    # c's owner resends another context while c computes: the old round's state goes at its finish
    old = t.sessions[("edge-a", "c", "")]
    fresh = t.admit(draft("c", rnd=0, attempt=2, context=(5, 5)), "z", 1001.0)
    t.finish(old, Outcome(0, 1, 1.0, 0.0), "C-old", 1001.0)
    assert rel[-1] == "C-old"
    finish_with(t, fresh, "C", 1001.0)
    # replaced while idle: released at once; a failed compute releases the state it had
    t.admit(draft("c", rnd=3, context=(6, 6, 6)), "x", 1002.0)
    assert rel[-1] == "C"
    held = t.sessions[("edge-a", "c", "")]
    held.state = "C2"
    t.finish(held, RuntimeError("boom"), None, 1003.0)
    assert rel[-1] == "C2" and not t.sessions
    # a held session that cannot grow past the context limit is dropped with its state
    finish_with(t, t.admit(draft("e", tokens=(1,), context=(1, 2, 3)), "x", 1004.0), "E")
    assert t.admit(draft("e", rnd=1, context=None, tokens=(1,) * 8), "x", 1005.0).event == "too_long"
    assert rel[-1] == "E" and rel == ["A", "B", "D", "C-old", "C", "C2", "E"]


def test_a_computed_error_that_names_its_code_is_answered_with_it():
    class TooLong(Exception):
        code = "too_long"

    t = SessionTable(CFG)
    adm = t.admit(draft(), "x", 0.0)
    (reply,) = t.finish(adm.compute.session, TooLong("context of 9000 tokens exceeds the slot capacity"), None, 1.0)
    assert reply.msg.code == "too_long" and "exceeds the slot capacity" in reply.msg.message


# --- drafts bound to their sender ---------------------------------------------------------------
def test_a_draft_naming_another_edge_than_its_subject_is_refused_and_touches_nothing():
    t = SessionTable(CFG)
    compute(t, draft(edge="edge-a"), now=0.0)
    held = dict(t.sessions)
    forged_new = t.admit(draft("r2", edge="edge-a"), "x", 1.0, sender="edge-b")
    forged_round = t.admit(draft(rnd=1, context=None, edge="edge-a"), "x", 1.0, sender="edge-b")
    forged_end = t.admit(draft(rnd=1, tokens=(), context=None, edge="edge-a", final=True), "x", 1.0, sender="edge-b")
    for adm in (forged_new, forged_round, forged_end):
        assert adm.event == "bad_message" and adm.compute is None and adm.replies[0].msg.code == "bad_message"
        assert "'edge-a'" in adm.detail and "'edge-b'" in adm.detail
    assert "final draft" in forged_end.detail
    assert t.sessions == held and not t.ended and t.rounds == 1
    assert t.admit(draft(rnd=1, context=None, edge="edge-a"), "x", 2.0, sender="edge-a").event == "compute"


def test_the_sender_rule_trusts_the_subject_and_nothing_in_process():
    assert sender_mismatch("edge-a", draft(edge="edge-a")) is None
    assert sender_mismatch(None, draft(edge="edge-a")) is None  # in-process: no subject, no other sender
    assert "arrived on edge ''" in sender_mismatch("", draft(edge="edge-a"))


# --- a fair share per edge ------------------------------------------------------------------------
SHARE = TableConfig("cloud-1", max_sessions=4, session_ttl_s=60.0, evict_idle_s=5.0, max_sessions_per_edge=2)


def test_the_share_defaults_to_half_the_cap_and_rounds_to_the_session_share():
    assert TableConfig(max_sessions=128).sessions_per_edge == 64 and TableConfig(max_sessions=1).sessions_per_edge == 1
    assert TableConfig(max_sessions=8, max_sessions_per_edge=3).rounds_per_edge == 3
    assert TableConfig(max_sessions=8, max_rounds_per_edge=1).rounds_per_edge == 1
    for bad in (dict(max_sessions=4, max_sessions_per_edge=5), dict(max_rounds_per_edge=0)):
        with pytest.raises(ValueError, match="max_"):
            TableConfig(**bad)


def test_an_edge_at_its_session_share_is_overloaded_while_another_edge_is_served():
    t = SessionTable(replace(SHARE, max_rounds_per_edge=4))  # the session share is what refuses here
    assert [t.admit(draft(f"a{i}", edge="edge-a"), "x", 0.0).event for i in range(2)] == ["compute"] * 2
    over = t.admit(draft("a2", edge="edge-a"), "x", 100.0)  # both still in flight
    assert over.event == "overloaded" and "max_sessions_per_edge=2" in over.detail and "edge-a" in over.detail
    assert t.admit(draft("b0", edge="edge-b"), "x", 100.0).event == "compute"
    assert sorted(k[1] for k in t.sessions) == ["a0", "a1", "b0"]


def test_at_its_share_only_an_edges_own_idle_session_makes_room():
    t = SessionTable(SHARE)
    compute(t, draft("b0", edge="edge-b"), now=0.0)  # the least recently used of all
    compute(t, draft("a0", edge="edge-a"), now=1.0)
    compute(t, draft("a1", edge="edge-a"), now=2.0)
    adm = t.admit(draft("a2", edge="edge-a"), "x", 10.0)
    assert adm.event == "compute" and adm.evicted == ("edge-a", "a0", "")
    assert ("edge-b", "b0", "") in t.sessions


def test_at_the_cap_the_biggest_edges_idle_session_is_evicted_not_the_oldest():
    t = SessionTable(replace(SHARE, max_sessions_per_edge=3))
    compute(t, draft("b0", edge="edge-b"), now=0.0)  # the oldest, but edge-b holds one session only
    for i in range(3):
        compute(t, draft(f"a{i}", edge="edge-a"), now=1.0 + i)
    adm = t.admit(draft("c0", edge="edge-c"), "x", 10.0)
    assert adm.event == "compute" and adm.evicted == ("edge-a", "a0", "")
    assert ("edge-b", "b0", "") in t.sessions


def test_at_the_cap_no_edge_loses_a_session_to_an_edge_as_big_as_itself():
    t = SessionTable(replace(SHARE, max_sessions_per_edge=3))
    compute(t, draft("a0", edge="edge-a"), now=0.0)
    compute(t, draft("a1", edge="edge-a"), now=0.0)
    t.admit(draft("b0", edge="edge-b"), "x", 1.0)  # edge-b's two rounds stay in flight
    t.admit(draft("b1", edge="edge-b"), "x", 1.0)
    adm = t.admit(draft("b2", edge="edge-b"), "x", 10.0)  # edge-a's idle sessions are not edge-b's to take
    assert adm.event == "overloaded" and "max_sessions=4" in adm.detail
    assert {k[1] for k in t.sessions} == {"a0", "a1", "b0", "b1"}
    adm = t.admit(draft("c0", edge="edge-c"), "x", 10.0)  # a smaller edge may take one of the biggest's
    assert adm.event == "compute" and adm.evicted[0] == "edge-a"


def test_an_edges_rounds_in_flight_are_bounded_even_on_replaced_sessions():
    t = SessionTable(replace(SHARE, max_rounds_per_edge=2))
    first = t.admit(draft(context=(1,), edge="edge-a"), "x", 0.0)
    second = t.admit(draft(context=(2,), edge="edge-a"), "x", 0.0)  # replaces the session, both rounds compute
    third = t.admit(draft(context=(3,), edge="edge-a"), "x", 0.0)
    assert (first.event, second.event, third.event) == ("compute", "compute", "overloaded")
    assert "max_rounds_per_edge=2" in third.detail and len(t.sessions) == 1
    assert t.admit(draft("b0", edge="edge-b"), "x", 0.0).event == "compute"  # another edge's rounds go on
    t.finish(first.compute.session, Outcome(1, 42, 3.0, 0.0), "s1", 1.0)
    assert t.admit(draft(context=(3,), edge="edge-a"), "x", 1.0).event == "compute"
