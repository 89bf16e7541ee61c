"""Specification of the proactive-drafting cost model (one and R rounds in flight)."""
import numpy as np
import pytest

from control.proactive_cost import (
    best_pipeline, critical_delay_for_rounds, ms_per_token, pipelined_ms_per_token, survival_from_alpha,
)


def test_off_is_todays_round_time_over_tokens() -> None:
    assert ms_per_token(30, 20, 50, 4, 0.5, proactive=False) == (30 + 100 + 20) / 4


def test_on_saves_draft_time_when_whole_round_is_kept() -> None:
    assert ms_per_token(30, 20, 50, 4, 1.0, proactive=True) == (100 + 20) / 4


def test_never_worse_at_zero_delay() -> None:
    assert ms_per_token(30, 20, 0, 4, 0.3, True) <= ms_per_token(30, 20, 0, 4, 0.3, False)


@pytest.mark.parametrize("one_way", [0.0, 5.0, 50.0])
def test_one_round_in_flight_is_the_one_round_formula_with_kappa_the_survival_past_the_round(one_way) -> None:
    alpha, length, per_tok, verify = 0.8, 4, 0.75, 2.0
    s = survival_from_alpha(alpha, length)
    tokens = 1 + s[1:length + 1].sum()
    old = ms_per_token((length + 1) * per_tok, verify, one_way, tokens, s[length + 1], proactive=True)
    assert pipelined_ms_per_token(per_tok, verify, one_way, length, 1, alpha=alpha) == pytest.approx(old)


def test_without_drafting_ahead_it_is_todays_chain() -> None:
    s = np.array([1.0, 0.9, 0.7, 0.5, 0.2])
    j = pipelined_ms_per_token(1.0, 2.0, 50.0, 3, 1, survival=s, draft_ahead=False)
    assert j == pytest.approx((3 * 1.0 + 100 + 2.0) / (1 + 0.9 + 0.7 + 0.5))


def test_a_second_round_in_flight_gains_nothing_while_the_draft_is_the_bottleneck() -> None:
    d_c = critical_delay_for_rounds(1.0, 2.0, 8)  # 9 ms of draft vs 2 ms of verify: 3.5 ms one way
    assert d_c == pytest.approx(3.5)
    for one_way in (0.0, d_c):
        assert pipelined_ms_per_token(1.0, 2.0, one_way, 8, 2, alpha=0.8) == \
            pytest.approx(pipelined_ms_per_token(1.0, 2.0, one_way, 8, 1, alpha=0.8))
    assert pipelined_ms_per_token(1.0, 2.0, d_c + 1, 8, 2, alpha=0.8) < \
        pipelined_ms_per_token(1.0, 2.0, d_c + 1, 8, 1, alpha=0.8)


def test_every_rejection_costs_a_round_trip_so_many_rounds_approach_one_per_run() -> None:
    # R large: the period is the draft or verify time, and runs end at the first miss
    alpha, one_way = 0.75, 50.0
    j = pipelined_ms_per_token(0.0, 0.0, one_way, 1, 1000, alpha=alpha)
    tokens_per_run = 1 / (1 - alpha ** 2) * (1 + alpha)  # rounds per run x tokens per round
    assert j == pytest.approx((1 - alpha ** 2) * 2 * one_way / (1 + alpha) + alpha ** 2 * 0.1 / (1 + alpha))
    assert tokens_per_run == pytest.approx(1 / (1 - alpha))


def test_the_chosen_shape_has_one_round_at_zero_delay_and_more_at_fifty_ms() -> None:
    _, r0, _, _ = best_pipeline(0.75, 2.0, 0.0, alpha=0.8)
    _, r50, ahead50, j50 = best_pipeline(0.75, 2.0, 50.0, alpha=0.8)
    assert r0 == 1
    assert r50 > 1 and ahead50
    assert j50 < min(pipelined_ms_per_token(0.75, 2.0, 50.0, n, 1, alpha=0.8, draft_ahead=False)
                     for n in range(1, 17))


def test_a_measured_table_too_short_for_the_length_is_refused() -> None:
    with pytest.raises(ValueError, match="needs S"):
        pipelined_ms_per_token(1.0, 2.0, 0.0, 4, 1, survival=np.array([1.0, 0.5, 0.2]))


def test_more_rounds_without_drafting_ahead_is_refused() -> None:
    with pytest.raises(ValueError, match="draft_ahead"):
        pipelined_ms_per_token(1.0, 2.0, 0.0, 4, 2, alpha=0.5, draft_ahead=False)


def test_where_draft_and_verify_share_one_compute_zero_delay_keeps_the_plain_chain() -> None:
    # drafting ahead cannot hide the draft behind a verify that runs on the same cores
    _, r, ahead, j = best_pipeline(0.75, 2.0, 0.0, alpha=0.8, overlap=False)
    assert (r, ahead) == (1, False)
    _, _, ahead_overlapped, j_overlapped = best_pipeline(0.75, 2.0, 0.0, alpha=0.8)
    assert ahead_overlapped and j_overlapped < j


def test_shared_compute_still_pays_for_rounds_in_flight_at_fifty_ms() -> None:
    _, r, ahead, j = best_pipeline(0.75, 2.0, 50.0, alpha=0.8, overlap=False)
    assert ahead and r > 1
