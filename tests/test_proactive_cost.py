"""Specification of the proactive-drafting cost model."""
from control.proactive_cost import ms_per_token


def test_off_is_todays_round_time_over_tokens() -> None:
    assert ms_per_token(30, 20, 50, 4, 0.5, proactive=False) == (30 + 100 + 20) / 4


def test_on_saves_draft_time_when_whole_round_is_kept() -> None:
    assert ms_per_token(30, 20, 50, 4, 1.0, proactive=True) == (100 + 20) / 4


def test_never_worse_at_zero_delay() -> None:
    assert ms_per_token(30, 20, 0, 4, 0.3, True) <= ms_per_token(30, 20, 0, 4, 0.3, False)
