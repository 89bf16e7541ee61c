"""Specification of the proactive-drafting rules (no broker, no models)."""
import pytest

from nodes.protocol.pipelining import AheadDraft, VerdictLedger, keeps

AHEAD = AheadDraft(round_id=3, drafted=4, predicted_next=17, continuation=(5, 6, 7))


def test_full_acceptance_with_matching_next_token_keeps_the_continuation() -> None:
    assert keeps(AHEAD, 3, accepted=4, next_token=17)


def test_full_acceptance_with_other_bonus_token_discards_it() -> None:
    assert not keeps(AHEAD, 3, accepted=4, next_token=18)


def test_partial_acceptance_discards_it_even_if_token_matches() -> None:
    assert not keeps(AHEAD, 3, accepted=3, next_token=17)


def test_verdict_for_another_round_is_refused() -> None:
    with pytest.raises(ValueError, match="round 2"):
        keeps(AHEAD, 2, accepted=4, next_token=17)


def test_a_verdict_applies_once() -> None:
    ledger = VerdictLedger()
    assert ledger.apply(3)
    assert not ledger.apply(3)


# --- R rounds in flight ---------------------------------------------------------------------------

from nodes.protocol.pipelining import Basis, CloudWindow, EdgeWindow, Replay, Stale, Verify  # noqa: E402


def three_in_flight() -> EdgeWindow:
    w = EdgeWindow(3)
    for p in (10, 20, 30):  # each round of 4 drafts, predicting p after them
        w.send(4, p)
    return w


def test_rounds_in_flight_are_each_built_on_the_previous_one_being_kept() -> None:
    w = three_in_flight()
    assert [r.basis for r in w.in_flight] == [Basis(-1, None), Basis(0, 10), Basis(1, 20)]


def test_the_window_refuses_a_round_beyond_its_size() -> None:
    with pytest.raises(ValueError, match="already in flight"):
        three_in_flight().send(4, 40)


def test_a_kept_verdict_leaves_the_later_rounds_in_flight() -> None:
    w = three_in_flight()
    [a] = w.on_verdict(0, 4, 10)
    assert a.kept and a.cancelled == () and [r.round_id for r in w.in_flight] == [1, 2]


def test_a_rejection_voids_every_round_built_on_it_and_the_next_round_starts_from_its_verdict() -> None:
    w = three_in_flight()
    [a] = w.on_verdict(0, 2, 99)
    assert not a.kept and a.cancelled == (1, 2) and w.in_flight == []
    assert w.next_basis() == Basis(0, None)


def test_a_full_acceptance_with_another_next_token_voids_them_too() -> None:
    [a] = three_in_flight().on_verdict(0, 4, 11)
    assert not a.kept and a.cancelled == (1, 2)


def test_a_verdict_that_overtakes_an_earlier_one_waits_for_it() -> None:
    w = three_in_flight()
    assert w.on_verdict(1, 4, 20) == []
    assert [a.sent.round_id for a in w.on_verdict(0, 4, 10)] == [0, 1]


def test_a_duplicated_verdict_is_applied_once() -> None:
    w = three_in_flight()
    assert len(w.on_verdict(0, 4, 10)) == 1
    assert w.on_verdict(0, 4, 10) == []


def test_a_verdict_for_a_voided_round_is_dropped() -> None:
    w = three_in_flight()
    w.on_verdict(0, 1, 5)
    assert w.on_verdict(1, 4, 20) == []


def test_the_cloud_verifies_the_chain_while_its_predictions_hold() -> None:
    c = CloudWindow()
    assert c.admit(0, Basis(-1, None)) == Verify(None)
    c.record(0, 4, 4, 10)
    assert c.admit(1, Basis(0, 10)) == Verify(10)


def test_the_cloud_drops_a_round_whose_assumed_verdict_did_not_happen() -> None:
    c = CloudWindow()
    c.record(0, 4, 4, 11)
    assert isinstance(c.admit(1, Basis(0, 10)), Stale)
    c2 = CloudWindow()
    c2.record(0, 4, 3, 10)
    assert isinstance(c2.admit(1, Basis(0, 10)), Stale)


def test_after_a_rejection_the_cloud_drops_the_voided_rounds_and_takes_the_redraft() -> None:
    c = CloudWindow()
    c.record(0, 4, 1, 7)
    assert isinstance(c.admit(1, Basis(0, 10)), Stale)
    assert isinstance(c.admit(2, Basis(1, 20)), Stale)
    assert c.admit(3, Basis(0, None)) == Verify(None)


def test_a_round_sent_twice_is_answered_from_the_record_not_verified_again() -> None:
    c = CloudWindow()
    c.record(0, 4, 2, 9)
    assert c.admit(0, Basis(-1, None)) == Replay(2, 9)
    with pytest.raises(ValueError, match="twice"):
        c.record(0, 4, 2, 9)


def test_a_round_whose_parent_has_not_arrived_is_stale_until_resent() -> None:
    c = CloudWindow()
    assert isinstance(c.admit(1, Basis(0, 10)), Stale)
    c.record(0, 4, 4, 10)
    assert c.admit(1, Basis(0, 10)) == Verify(10)
