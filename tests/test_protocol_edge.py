"""The edge's side of the round protocol, without a broker: one rule per test."""
from __future__ import annotations

import pytest

from control import RoundContext, make_policy
from nodes.protocol.request import Accepted, EdgeRequest, Failed, RoundRules, RoundTimes, Send
from nodes.protocol.timing import DelayEstimate, one_way_delay_ms, outcome_of, round_log_fields
from schemas import subjects
from schemas.messages import ErrorMsg, GenerateRequest, VerdictMsg
from schemas.rounds import Draft

RULES = RoundRules("edge-a", max_length=8, request_timeout_s=2.0, failover_deadline_s=30.0)
EOS = 0


def request(max_new: int = 16, **kw) -> EdgeRequest:
    req = GenerateRequest("r1", prompt="x", max_new_tokens=max_new, **kw)
    return EdgeRequest(req, [5, 6, 7], RULES, "fixed:3", frozenset({EOS}))


def verdict(r: EdgeRequest, accepted: int, nxt: int = 9, verifier: str = "cloud-1", **kw) -> VerdictMsg:
    fields = dict(request_id="r1", round=r.round, attempt=r.attempt, accepted=accepted, next_token=nxt,
                  verify_ms=3.0, queue_ms=0.5, verifier_id=verifier) | kw
    return VerdictMsg(**fields)


def run_round(r: EdgeRequest, tokens=(1, 2, 3), accepted=2, nxt=9, verifier="cloud-1"):
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft(list(tokens), 0), 0.0)
    step = r.on_verdict(verdict(r, accepted, nxt, verifier), 0.0)
    assert isinstance(step, Accepted)
    return r.complete(step.verdict, RoundTimes(40.0, 10.0, 1.0, 20.0), "s1", 10.0, 1)


def test_the_first_round_carries_the_context_to_the_verifier_queue_group():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    send = r.send(Draft([1, 2, 3], 0), 0.0)
    assert send.subject == subjects.draft("edge-a") and list(send.msg.context) == [5, 6, 7] and send.msg.attempt == 0
    assert send.subject == "specstop.draft.edge-a" and send.msg.edge_id == "edge-a"  # the sender, in the subject


def test_later_rounds_go_to_the_sticky_verifier_without_the_context():
    r = request()
    run_round(r, verifier="cloud-7")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    send = r.send(Draft([4], 0), 0.0)
    assert send.subject == subjects.draft("edge-a", "cloud-7") and send.msg.context is None and send.msg.round == 1
    assert send.subject == "specstop.draft.edge-a.cloud-7"


def test_a_placed_session_opens_on_the_chosen_verifier_with_its_context():
    r = request()
    r.place("cloud-2")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    send = r.send(Draft([1, 2, 3], 0), 0.0)
    assert send.subject == subjects.draft("edge-a", "cloud-2") and list(send.msg.context) == [5, 6, 7]
    step = r.on_verdict(verdict(r, 2, verifier="cloud-2"), 0.0)
    r.complete(step.verdict, RoundTimes(40.0, 10.0, 1.0, 20.0), "s1", 10.0, 1)
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    later = r.send(Draft([4], 0), 0.0)
    assert later.subject == subjects.draft("edge-a", "cloud-2") and later.msg.context is None


def test_a_placed_session_whose_verifier_is_gone_opens_through_the_queue_group():
    r = request()
    r.place("gone")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)
    step = r.on_no_responders(0.0)
    assert isinstance(step, Send) and step.subject == subjects.draft("edge-a") and list(step.msg.context) == [5, 6, 7]


def test_placement_only_applies_before_the_first_round():
    r = request()
    run_round(r, verifier="cloud-7")
    r.place("cloud-2")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    assert r.send(Draft([4], 0), 0.0).subject == subjects.draft("edge-a", "cloud-7")


def test_a_verdict_for_another_attempt_is_not_accepted():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)
    step = r.on_verdict(verdict(r, 1, attempt=5), 0.0)
    assert isinstance(step, Send) and step.msg.attempt == 1


def test_a_verdict_for_another_round_is_not_accepted():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)
    assert isinstance(r.on_verdict(verdict(r, 1, round=4), 0.0), Send)


def test_a_verdict_accepting_more_than_was_drafted_fails_the_request():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2], 0), 0.0)
    step = r.on_verdict(verdict(r, 3), 0.0)
    assert isinstance(step, Failed) and "accepted 3 tokens of a 2-token draft" in step.message


def test_a_timeout_retries_the_same_verifier_once_then_the_queue_group_with_the_context():
    r = request()
    run_round(r)
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    first = r.on_timeout(2.0)
    assert first.subject == subjects.draft("edge-a", "cloud-1") and first.msg.context is None and first.msg.attempt == 1
    second = r.on_timeout(4.0)
    assert second.subject == subjects.draft("edge-a") and list(second.msg.context) == r.context and second.wait_s == 0


def test_no_responders_on_the_sticky_verifier_goes_to_the_queue_group_at_once():
    r = request()
    run_round(r)
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    step = r.on_no_responders(0.0)
    assert step.subject == subjects.draft("edge-a") and step.msg.context is not None and step.wait_s == 0


def test_no_verifier_at_all_backs_off_with_growing_capped_waits():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1], 0), 0.0)
    waits = [r.on_no_responders(float(i)).wait_s for i in range(10)]
    assert waits[0] > 0 and waits == sorted(waits) and max(waits) == RULES.backoff_max_s


def test_resend_context_goes_to_the_queue_group_without_waiting():
    r = request()
    run_round(r)
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    step = r.on_error(ErrorMsg("resend_context", "no session", "r1"), 0.0)
    assert step.subject == subjects.draft("edge-a") and step.msg.context is not None and step.wait_s == 0


def test_overloaded_goes_to_the_queue_group_after_a_pause():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    step = r.on_error(ErrorMsg("overloaded", "full", "r1"), 0.0)
    assert step.subject == subjects.draft("edge-a") and step.wait_s > 0


def test_past_the_failover_deadline_the_request_fails_naming_what_was_unreachable():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    r.on_no_responders(0.0)
    step = r.on_no_responders(RULES.failover_deadline_s + 0.1)
    assert isinstance(step, Failed) and step.code == "no_verifier"
    assert "no responders" in step.message and "30 s" in step.message


def test_a_verifier_that_refuses_the_message_fails_the_request_with_its_reason():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    step = r.on_error(ErrorMsg("bad_message", "draft: top_p must be in (0, 1]", "r1"), 0.0)
    assert isinstance(step, Failed) and "top_p" in step.message


def test_an_accepted_round_yields_the_accepted_drafts_plus_the_targets_token():
    r = request()
    rec = run_round(r, tokens=(1, 2, 3), accepted=2, nxt=9)
    assert rec.new_tokens == [1, 2, 9] and list(rec.chunk.token_ids) == [1, 2, 9] and r.context[-3:] == [1, 2, 9]
    assert rec.timing.length == 3 and rec.timing.accepted == 2 and rec.timing.tokens == 3 and not rec.done


def test_network_time_is_the_round_minus_compute_and_queues_and_the_delay_estimate_is_half():
    r = request()
    rec = run_round(r)  # round 40, draft 10, edge queue 1, verify 3, queue 0.5
    assert rec.timing.network_ms == pytest.approx(25.5)
    assert rec.outcome.realized_delay_ms == one_way_delay_ms(25.5) == pytest.approx(12.75)
    assert outcome_of(rec.timing) == rec.outcome


def test_eos_ends_the_request_and_is_not_emitted():
    r = request()
    rec = run_round(r, tokens=(1, EOS, 3), accepted=3, nxt=9)
    assert rec.done and r.finish_reason == "eos" and rec.new_tokens == [1] and list(rec.chunk.full_ids) == [1]


def test_the_length_limit_cuts_the_last_round():
    r = request(max_new=2)
    rec = run_round(r, tokens=(1, 2, 3), accepted=3)
    assert rec.done and r.finish_reason == "length" and r.out == [1, 2] and rec.timing.tokens == 2


def test_target_only_is_the_policy_of_length_zero():
    r = request()
    plan = r.plan(make_policy("target-only"), 0, RoundContext())
    send = r.send(Draft([], plan.seed), 0.0)
    assert plan.length == 0 and list(send.msg.tokens) == []


def test_a_policy_asking_for_more_than_the_maximum_is_clamped():
    class Greedy:
        def choose(self, ctx):
            return 2000

    assert request().plan(Greedy(), 0, RoundContext()).length == RULES.max_length


def test_a_round_drafts_no_more_than_the_tokens_still_wanted_need():
    r = request(max_new=6)
    assert r.plan(make_policy("fixed:8"), 0, RoundContext()).length == 5  # 5 drafted + the bonus token
    run_round(r, tokens=(1, 2, 3), accepted=3)  # 4 of 6 emitted
    assert r.plan(make_policy("fixed:8"), 0, RoundContext()).length == 1
    run_round(r, tokens=(1,), accepted=0)  # 5 of 6
    assert r.plan(make_policy("fixed:8"), 0, RoundContext()).length == 0  # one token to go: the target's


def test_final_messages_reach_the_current_and_every_left_behind_verifier():
    r = request()
    run_round(r, verifier="cloud-1")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    r.on_no_responders(0.0)
    step = r.on_verdict(verdict(r, 0, verifier="cloud-2"), 0.0)
    assert isinstance(step, Accepted)
    targets = {s for s, m in r.final_messages() if m.final}
    # the retry went to the queue group: a verifier we never heard from may hold the session too
    assert targets == {subjects.draft("edge-a", "cloud-1"), subjects.draft("edge-a", "cloud-2"),
                       subjects.session_end("edge-a")}


def test_the_round_log_line_is_the_timing_event():
    rec = run_round(request())
    fields = round_log_fields(rec.timing)
    assert fields["draft_length"] == rec.timing.length and fields["round_ms"] == rec.timing.round_ms
    assert "length" not in fields and fields["link_ms"] == 20.0


def test_a_request_ending_before_any_verdict_tells_every_verifier_to_drop_its_session():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)  # to the queue group: nobody has said who took it
    [(subject, final)] = r.final_messages()
    assert subject == subjects.session_end("edge-a") and final.final and final.request_id == "r1"


def test_once_a_verdict_names_the_verifier_only_it_is_told():
    r = request()
    run_round(r, verifier="cloud-3")
    assert [s for s, _ in r.final_messages()] == [subjects.draft("edge-a", "cloud-3")]


def test_the_delay_a_policy_is_told_ignores_one_slow_round_and_follows_a_lasting_change():
    est = DelayEstimate()
    for ms in (10.0, 10.4, 9.8, 10.1):
        est.add(ms)
    est.add(335.0)  # one round that also waited on a busy event loop
    assert est.ms == pytest.approx(10.1)
    for _ in range(3):
        est.add(150.0)  # the link itself changed
    assert est.ms == 150.0


def test_a_timed_out_round_goes_with_its_context_to_another_live_verifier_not_the_same_one():
    r = request()
    run_round(r, verifier="stalled")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    step = r.on_timeout(2.0, elsewhere="healthy")
    assert isinstance(step, Send) and step.subject == subjects.draft("edge-a", "healthy")
    assert list(step.msg.context) == r.context and step.msg.attempt == 1
    v = verdict(r, 1, verifier="healthy")
    assert isinstance(r.on_verdict(v, 2.1), Accepted) and r.verifier == "healthy"
    targets = [t for t, _ in r.final_messages()]
    assert subjects.draft("edge-a", "stalled") in targets and subjects.draft("edge-a", "healthy") in targets
    assert subjects.session_end("edge-a") not in targets  # every holder is known


def test_without_another_live_verifier_a_timeout_is_retried_on_the_same_then_the_queue_group():
    r = request()
    run_round(r, verifier="only")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    same = r.on_timeout(2.0, elsewhere=None)
    assert same.subject == subjects.draft("edge-a", "only") and same.msg.context is None
    assert r.on_timeout(4.0, elsewhere="only").subject == subjects.draft("edge-a")  # "elsewhere" may not be itself


def test_a_round_whose_verifier_stopped_sending_heartbeats_moves_before_its_timeout():
    r = request()
    run_round(r, verifier="stalled")
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([4], 0), 0.0)
    step = r.on_holder_gone(0.5, "healthy")
    assert isinstance(step, Send) and step.subject == subjects.draft("edge-a", "healthy") and step.wait_s == 0.0
    assert list(step.msg.context) == r.context and "stalled" in r.left_behind
    late = verdict(r, 1, verifier="stalled", attempt=0)  # the stalled one wakes up: its old attempt is refused
    assert not isinstance(r.on_verdict(late, 1.0), Accepted)


def test_a_first_round_lost_in_the_queue_group_and_moved_elsewhere_still_ends_everywhere():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)
    step = r.on_timeout(2.0, elsewhere="healthy")
    assert step.subject == subjects.draft("edge-a", "healthy")
    r.on_verdict(verdict(r, 1, verifier="healthy"), 2.1)
    assert subjects.session_end("edge-a") in [t for t, _ in r.final_messages()]  # whoever took the first attempt


def test_a_queue_group_attempt_moves_when_a_verifier_goes_silent_and_every_possible_holder_is_ended():
    r = request()
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)  # to the queue group: the silent one may have taken it
    step = r.on_holder_gone(3.5, "healthy")
    assert step.subject == subjects.draft("edge-a", "healthy") and list(step.msg.context) == [5, 6, 7]
    r.on_verdict(verdict(r, 1, verifier="healthy"), 3.6)
    assert subjects.session_end("edge-a") in [t for t, _ in r.final_messages()]
