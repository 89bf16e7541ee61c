"""Policy updates are checked before an edge acts on them; the table of policies is bounded."""
from __future__ import annotations

import pytest

from control import ControlError, RoundContext, RoundOutcome, make_policy
from nodes.policy_book import PolicyBook


def learned_snapshot(rounds: int = 50) -> dict:
    p = make_policy("auto", max_length=8)
    for _ in range(rounds):
        p.observe(RoundOutcome(8, 8, 230.0, RoundContext(100.0)))
    return p.snapshot()


def test_a_plausible_next_version_is_applied():
    book = PolicyBook(8, 0, learn_locally=False)
    book.apply_update("auto", 7, learned_snapshot())
    assert book.versions["auto"] == 7 and book.acting("auto")[1] == 7


def test_until_the_first_update_a_remote_edge_acts_on_its_fallback():
    book = PolicyBook(8, 0, learn_locally=False, fallback=make_policy("fixed:2", max_length=8))
    policy, version = book.acting("auto")
    assert policy.spec == "fixed:2" and version == 0


def test_a_forged_huge_version_is_refused_without_the_buckets_confirmation():
    book = PolicyBook(8, 0, learn_locally=False)
    book.apply_update("auto", 3, learned_snapshot())
    with pytest.raises(ControlError, match="not a plausible successor"):
        book.apply_update("auto", (1 << 53) - 1, learned_snapshot())
    assert book.versions["auto"] == 3
    book.apply_update("auto", 4, learned_snapshot())  # the real controller's next update still applies
    assert book.versions["auto"] == 4


def test_a_version_the_bucket_confirms_is_applied_even_after_a_controller_reset():
    book = PolicyBook(8, 0, learn_locally=False)
    book.apply_update("auto", 500, learned_snapshot())
    book.apply_update("auto", 2, learned_snapshot(), confirmed=True)
    assert book.versions["auto"] == 2


def test_the_same_version_twice_is_refused():
    book = PolicyBook(8, 0, learn_locally=False)
    book.apply_update("auto", 5, learned_snapshot())
    with pytest.raises(ControlError, match="already applied"):
        book.apply_update("auto", 5, learned_snapshot())


def test_a_snapshot_with_a_negative_count_is_refused_and_changes_nothing():
    book = PolicyBook(8, 0, learn_locally=False)
    good = learned_snapshot()
    book.apply_update("auto", 1, good)
    before = book.acting("auto")[0].snapshot()
    bad = learned_snapshot()
    bad["state"]["at_risk"][0] = -5
    with pytest.raises(ControlError, match="at_risk"):
        book.apply_update("auto", 2, bad)
    assert book.versions["auto"] == 1 and book.acting("auto")[0].snapshot() == before


def test_specs_are_kept_under_their_canonical_name():
    book = PolicyBook(8, 0)
    assert book.get("ucb-specstop:1").spec == "ucb-specstop" and list(book.policies) == ["ucb-specstop"]


def test_the_table_of_policies_is_bounded_least_recently_used_first():
    book = PolicyBook(8, 0, max_policies=3)
    for spec in ("fixed:1", "fixed:2", "fixed:3", "fixed:1", "fixed:4"):
        book.get(spec)
    assert list(book.policies) == ["fixed:3", "fixed:1", "fixed:4"] and book.evicted == 1


def test_a_spec_longer_than_the_maximum_draft_length_is_refused():
    with pytest.raises(ControlError, match="1..8"):
        PolicyBook(8, 0).get("fixed:2000")
