"""A round's time (nodes/protocol/timing): one rule builds it for each source, one reads it, and the
timing event carries the delay the policy was told, so a learner sees how far the paid one strays."""
from __future__ import annotations

import msgpack
import pytest

from control import Policy, RoundContext, RoundOutcome, make_policy
from nodes.protocol.request import Accepted, EdgeRequest, RoundRules
from nodes.protocol.timing import DelayEstimate, measured_round_times, modeled_round_times, network_ms, outcome_of, stall_time_ms
from nodes.speculative import speculative_generate
from schemas.codec import SchemaError, decode, encode
from schemas.messages import GenerateRequest, TimingEvent, VerdictMsg
from schemas.rounds import Draft


def one_round(told_ms: float, round_ms: float, verify_ms: float = 3.0, queue_ms: float = 0.5) -> TimingEvent:
    """A round told `told_ms` whose draft took 10 ms and whose edge clock read `round_ms`."""
    r = EdgeRequest(GenerateRequest("r1", prompt="x", max_new_tokens=16), [5, 6, 7], RoundRules("edge-a"), "fixed:3")
    r.plan(make_policy("fixed:3"), 0, RoundContext(told_ms))
    r.send(Draft([1, 2, 3], 0), 0.0)
    step = r.on_verdict(VerdictMsg("r1", 0, 0, 2, 9, verify_ms, queue_ms, "cloud-1"), 0.0)
    assert isinstance(step, Accepted)
    return r.complete(step.verdict, measured_round_times(round_ms, 10.0, 0.0, 0.0, 0.0), None, 0.0, 1).timing


def test_failed_attempts_are_not_the_rounds_time():
    t = measured_round_times(elapsed_ms=140.0, draft_ms=10.0, edge_queue_ms=2.0, link_ms=20.0, stall_ms=100.0)
    assert t.round_ms == 40.0 and t.stall_ms == 100.0 and t.edge_queue_ms == 2.0 and t.draft_real_ms is None


def test_the_stall_is_the_time_before_the_answered_attempt_began_and_none_when_the_first_was_answered():
    assert stall_time_ms(first_sent_s=100.0, answered_began_s=102.5, attempt=2) == pytest.approx(2500.0)
    assert stall_time_ms(first_sent_s=100.0, answered_began_s=100.001, attempt=0) == 0.0


def test_with_a_virtual_device_waiting_for_this_cpu_is_device_time_not_edge_queue():
    t = measured_round_times(40.0, draft_ms=25.0, edge_queue_ms=6.0, link_ms=0.0, stall_ms=0.0, draft_real_ms=4.0)
    assert t.edge_queue_ms == 0.0 and t.draft_ms == 25.0 and t.draft_real_ms == 4.0


@pytest.mark.parametrize("prefill_ms", [0.0, 7.5, 80.0])
def test_a_modeled_rounds_network_time_is_twice_the_delay_whatever_the_verify_holds(prefill_ms):
    verify_ms = 3.0 + prefill_ms  # a rebuilt session's verdict reports its prefill in verify_ms
    t = modeled_round_times(draft_ms=10.0, verify_ms=verify_ms, queue_ms=0.25, one_way_ms=30.0)
    assert network_ms(t.round_ms, t.edge_queue_ms, t.draft_ms, verify_ms, 0.25) == pytest.approx(60.0)


class Recorder(Policy):
    """fixed:3 that keeps every outcome it is given."""

    spec = "fixed:3"

    def __init__(self):
        super().__init__(8)
        self.outcomes: list[RoundOutcome] = []

    def choose(self, ctx: RoundContext) -> int:
        return 3

    def observe(self, outcome: RoundOutcome) -> None:
        self.outcomes.append(outcome)


def test_the_in_process_loop_pays_the_delay_it_was_given_also_in_the_round_that_prefills(tiny_pair):
    policy = Recorder()
    speculative_generate(tiny_pair, [1, 2, 3, 0, 1, 2, 3, 0], 12, policy, delay_ms=50.0)
    assert len(policy.outcomes) >= 2  # the first round rebuilds the session (prefill), later ones do not
    for o in policy.outcomes:
        assert o.context.delay_ms == 50.0
        assert o.realized_delay_ms == pytest.approx(50.0, abs=0.01)


def test_the_timing_event_carries_the_delay_the_policy_was_told():
    ev = one_round(told_ms=12.5, round_ms=60.0)
    assert ev.told_delay_ms == 12.5 and ev.network_ms == pytest.approx(46.5)


def test_a_learner_is_told_the_told_delay_and_pays_the_measured_one():
    o = outcome_of(one_round(told_ms=12.5, round_ms=60.0))
    assert o.context.delay_ms == 12.5 and o.realized_delay_ms == pytest.approx(23.25)


def test_an_event_without_the_told_delay_stands_for_a_policy_told_the_delay_it_paid():
    o = outcome_of(TimingEvent("edge-a", "r1", 0, 0, 3, 2, 60.0, 10.0, 3.0, 0.5, 46.5, 0.0, "fixed:3", 0))
    assert o.context.delay_ms == pytest.approx(23.25) == pytest.approx(o.realized_delay_ms)


def test_an_event_from_an_edge_that_does_not_send_the_told_delay_still_decodes():
    body = msgpack.unpackb(encode(one_round(told_ms=12.5, round_ms=60.0)))
    del body["told_delay_ms"]
    ev = decode(msgpack.packb(body), expect=(TimingEvent,))
    assert ev.told_delay_ms is None and ev.round_ms == 60.0


def test_a_negative_told_delay_is_refused_naming_the_field():
    body = msgpack.unpackb(encode(one_round(told_ms=12.5, round_ms=60.0)))
    body["told_delay_ms"] = -1.0
    with pytest.raises(SchemaError, match="told_delay_ms"):
        decode(msgpack.packb(body), expect=(TimingEvent,))


def test_auto_learns_from_the_events_how_much_longer_the_paid_delay_is_than_the_told_one():
    p = make_policy("auto", max_length=8)
    for i in range(300):  # told the median (10 ms); a spike every fifth round pays 60 ms
        paid = 60.0 if i % 5 == 0 else 10.0
        p.observe(outcome_of(one_round(told_ms=10.0, round_ms=13.5 + 2 * paid)))
    assert p.delay_bias() == pytest.approx(10.0, abs=1.0)  # the mean paid (20 ms) minus the told 10


def test_a_delay_estimate_says_whether_anything_was_measured():
    d = DelayEstimate()
    assert not d.known and d.ms == 0.0  # a placeholder: the edge falls back to the configured link
    for ms in (50.0, 51.0, 400.0):
        d.add(ms)
    assert d.known and d.ms == 51.0
