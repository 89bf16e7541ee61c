"""What a resuming client gets back, and how an edge takes the controller's snapshots
(nodes/protocol/resume, nodes/protocol/policy_sync), without a broker: one rule per test."""
from __future__ import annotations

import pytest

from control import ControlError, RoundContext, RoundOutcome, make_policy
from nodes.policy_book import PolicyBook
from nodes.protocol import policy_sync
from nodes.protocol.request import Accepted, EdgeRequest, RoundRules
from nodes.protocol.timing import RoundTimes
from nodes.protocol.resume import RecentStreams, held_state
from schemas.messages import ErrorMsg, GenerateRequest, PolicyUpdate, TokenChunk, VerdictMsg
from schemas.rounds import Draft


class Detok:
    emitted = "so far"

    def feed(self, ids): return ""
    def flush(self): return ""
    def flush_all(self): return self.emitted


def request_after_one_round() -> EdgeRequest:
    r = EdgeRequest(GenerateRequest("r1", prompt="x", max_new_tokens=16), [5, 6, 7], RoundRules("edge-a"), "fixed:3",
                    detok=Detok())
    r.plan(make_policy("fixed:3"), 0, RoundContext())
    r.send(Draft([1, 2, 3], 0), 0.0)
    step = r.on_verdict(VerdictMsg("r1", 0, 0, 2, 9, 3.0, 0.5, "cloud-1"), 0.0)
    assert isinstance(step, Accepted)
    r.complete(step.verdict, RoundTimes(40.0, 10.0), None, 0.0, 1)
    return r


def last_chunk() -> TokenChunk:
    return TokenChunk("r1", 3, [4], "x", True, "length", 4, 9, [1] * 9, "all")


def test_a_held_stream_answers_with_everything_so_far_to_be_replaced_not_appended():
    state = held_state("r1", request_after_one_round(), None)
    assert isinstance(state, TokenChunk) and state.resync and not state.done
    assert list(state.full_ids) == [1, 2, 9] and state.full_text == "so far" and (state.seq, state.rounds) == (0, 1)


def test_a_held_stream_with_nothing_streamed_yet_has_no_state():
    r = EdgeRequest(GenerateRequest("r1", prompt="x", max_new_tokens=16), [5], RoundRules("edge-a"), "fixed:3")
    assert held_state("r1", r, None) is None and held_state("r1", None, None) is None


def test_an_ended_stream_answers_with_its_last_message_again_marked_resync():
    state = held_state("r1", request_after_one_round(), last_chunk())
    assert state.resync and state.done and state.seq == 3 and list(state.full_ids) == [1] * 9


def test_a_finished_stream_is_answered_only_to_the_inbox_it_went_to():
    recent = RecentStreams()
    recent.remember("r1", "_INBOX.a", last_chunk(), True, 0.0)
    assert recent.answer("r1", "_INBOX.a").resync and recent.answer("r1", "_INBOX.b") is None


def test_a_refusal_before_any_work_is_not_kept_so_sending_again_is_not_answered_by_it():
    recent = RecentStreams()
    recent.remember("r1", "_INBOX.a", ErrorMsg("overloaded", "edge is full", "r1"), False, 0.0)
    assert "r1" not in recent and recent.answer("r1", "_INBOX.a") is None


def test_finished_streams_are_kept_bounded_in_count_and_age():
    recent = RecentStreams(keep=2, keep_s=10.0)
    for i, now in enumerate((0.0, 1.0, 2.0)):
        recent.remember(f"r{i}", "_INBOX.a", last_chunk(), True, now)
    assert "r0" not in recent and len(recent) == 2
    recent.remember("r3", "_INBOX.a", last_chunk(), True, 11.5)
    assert "r1" not in recent and "r2" in recent and "r3" in recent


def snapshot_after(rounds: int) -> dict:
    p = make_policy("auto", max_length=8)
    for _ in range(rounds):
        p.observe(RoundOutcome(4, 4, 50.0, RoundContext(10.0)))
    return p.snapshot()


def test_an_update_for_another_edge_is_refused_naming_that_edge():
    book = PolicyBook(8, 0, learn_locally=False)
    with pytest.raises(ControlError, match="update is for edge 'edge-b'"):
        policy_sync.spec_of(PolicyUpdate("edge-b", "auto", 1, snapshot_after(3)), "edge-a", book)


def test_only_the_buckets_exact_update_confirms_a_push():
    upd = PolicyUpdate("edge-a", "auto", 9, snapshot_after(3))
    assert policy_sync.bucket_confirms(PolicyUpdate("edge-a", "auto", 9, snapshot_after(3)), upd)
    assert not policy_sync.bucket_confirms(PolicyUpdate("edge-a", "auto", 9, snapshot_after(4)), upd)
    assert not policy_sync.bucket_confirms(PolicyUpdate("edge-a", "auto", 8, snapshot_after(3)), upd)


def test_a_bucket_entry_is_applied_at_any_version_but_not_twice():
    book = PolicyBook(8, 0, learn_locally=False)
    entry = PolicyUpdate("edge-a", "auto", 5_000_000, snapshot_after(3))  # far ahead: the bucket's word suffices
    assert policy_sync.restore(entry, "edge-a", book) is True and book.versions["auto"] == 5_000_000
    assert policy_sync.restore(entry, "edge-a", book) is False


def test_a_bucket_entry_for_another_edge_changes_nothing():
    book = PolicyBook(8, 0, learn_locally=False)
    with pytest.raises(ControlError, match="entry is for edge 'edge-b'"):
        policy_sync.restore(PolicyUpdate("edge-b", "auto", 2, snapshot_after(3)), "edge-a", book)
    assert book.versions.get("auto", 0) == 0
