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
