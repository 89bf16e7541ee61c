"""`edge --stream-width auto`'s rule (control/stream_width.py): the width per request from the edge's own
measurements: misses of every width counted from any request, each width's compute by running it."""
from __future__ import annotations

import random

import pytest

from control.stream_width import WidthChoice, WidthDecision

N = 64


def counts(misses: dict[int, float], tokens: int = N) -> tuple[int, list[int]]:
    """(judged, covered per width 1..8) for a request whose width w would have missed misses[w] per token."""
    ms = [misses.get(w, misses[max(k for k in misses if k <= w)]) for w in range(1, 9)]
    return tokens, [round(tokens * (1 - m)) for m in ms]


MISSES = {1: 0.30, 2: 0.10, 4: 0.04, 8: 0.01}


def observe(c: WidthChoice, width: int, compute_ms: float, one_way_ms: float) -> None:
    """A request at `width` that cost `compute_ms` per token besides its round trips."""
    judged, covered = counts(MISSES)
    misses = judged - covered[width - 1]
    c.observe(width, compute_ms * N + (misses + 1) * 2 * one_way_ms, N, one_way_ms, judged, covered)


def test_the_first_request_runs_the_start_width():
    assert WidthChoice(start=2).decide(50.0, N).width == 2
    assert WidthChoice(start=2).decide(50.0, N).reason == "start"


def test_a_wider_width_is_tried_where_its_misses_cost_more_round_trips_than_the_start_spends():
    c = WidthChoice(start=2)
    observe(c, 2, compute_ms=5.0, one_way_ms=50.0)
    d = c.decide(50.0, N)
    assert d.reason == "trial" and d.width in (4, 8)


def test_at_zero_delay_no_wider_width_is_tried_since_misses_cost_nothing_there():
    c = WidthChoice(start=2)
    observe(c, 2, compute_ms=5.0, one_way_ms=0.0)
    assert c.decide(0.0, N).width == 2
    c1 = WidthChoice(start=2, widths=(1, 2, 4, 8))
    observe(c1, 2, compute_ms=5.0, one_way_ms=0.0)
    assert c1.decide(0.0, N) == WidthDecision(1, "trial")  # narrower: nothing bounds its compute from below


def test_the_cheapest_measured_width_runs_once_every_width_worth_a_trial_ran():
    c = WidthChoice(start=2, widths=(2, 4, 8), retry_margin=0.0)
    for w, compute in ((2, 5.0), (4, 6.0), (8, 30.0)):
        observe(c, w, compute, 50.0)
    # modelled: w2 5 + (0.10 + 1/64) * 100 = 16.6, w4 6 + 5.6 = 11.6, w8 30 + 2.6 = 32.6
    assert c.decide(50.0, N) == WidthDecision(4, "cheaper")


def test_misses_of_a_width_never_run_are_known_from_other_widths_requests():
    c = WidthChoice(start=2, widths=(1, 2, 4, 8))
    observe(c, 2, 5.0, 50.0)
    assert c.misses_per_token(8) == pytest.approx(0.01, abs=0.01)
    assert c.misses_per_token(1) == pytest.approx(0.30, abs=0.01)
    assert c.modelled(8, 50.0, N) is None  # its compute is not: it has not run


def test_a_width_measured_at_another_delay_is_tried_again_when_the_delay_moved():
    c = WidthChoice(start=2, widths=(2, 4), retry_margin=0.0)
    observe(c, 2, 10.0, 50.0)
    observe(c, 4, 6.0, 50.0)
    observe(c, 4, 6.0, 5.0)  # the cheapest, measured again at 5 ms; w2 only at 50 ms
    assert c.decide(5.0, N) == WidthDecision(2, "delay_changed")
    observe(c, 2, 10.0, 5.0)
    assert c.decide(5.0, N) == WidthDecision(4, "cheaper")


def test_widths_modelled_close_to_the_cheapest_are_retried_on_a_doubling_schedule():
    c = WidthChoice(start=2, widths=(2, 4), retry_margin=0.5)
    observe(c, 2, 10.0, 50.0)
    observe(c, 4, 14.0, 50.0)  # 2: 10 + 11.6 = 21.6; 4: 14 + 5.6 = 19.6 -> 4 cheapest, 2 within 50 %
    reasons = [c.decide(50.0, N) for _ in range(16)]
    retries = [i + 1 for i, d in enumerate(reasons) if d.reason == "scheduled"]
    assert retries == [2, 4, 8, 16]  # the 2nd, 4th, 8th, ... decision
    assert all(d.width == 4 for d in reasons if d.reason == "cheaper")


@pytest.mark.parametrize("one_way_ms,cost,best", [
    (50.0, lambda w: 0.5 + 1.0 * w, 4),      # nodes cost the edge a little: w4 balances it with the misses
    (50.0, lambda w: 0.5 + 4.0 * w, 2),      # nodes cost the edge much (this CPU): w2
    (50.0, lambda w: 70.0, 8),               # children free (device emulation): widest
    (0.0, lambda w: 3.0 + 0.2 * w, 2),       # no delay: the narrowest ...
    (0.0, lambda w: 12.0 - w, 8),            # ... unless wider is cheaper there too: found on the schedule
])
def test_the_learner_settles_on_the_cheapest_width_under_noise(one_way_ms, cost, best):
    rng = random.Random(7)
    c = WidthChoice(start=2)
    picks = []
    for _ in range(40):
        w = c.decide(one_way_ms, N).width
        picks.append(w)
        observe(c, w, cost(w) * rng.uniform(0.95, 1.05), one_way_ms)
    late = picks[20:]
    assert late.count(best) >= 0.6 * len(late), picks


# Measured on this CPU at 50 ms (python -m pipeline.bench.stream_widths): the bench's three prompts'
# covered counts (of 64) per width 1..8, and per width the compute a and the round trips per miss b
# that fit them (w2 misses cost less than a round trip, w8 misses more): w8 wins the hard prompt,
# w2 the mix.
PROMPTS = ([53, 62, 63, 63, 63, 63, 63, 64], [59, 64, 64, 64, 64, 64, 64, 64], [42, 50, 54, 56, 60, 60, 60, 60])
CPU = {1: (5.0, 0.8), 2: (7.2, 0.77), 4: (9.5, 1.1), 8: (12.0, 1.58)}


def cpu_ms_per_token(width: int, prompt: int, one_way_ms: float) -> float:
    a, b = CPU[width]
    return a + b * (N - PROMPTS[prompt][width - 1]) / N * 2 * one_way_ms + 2 * one_way_ms / N


def test_the_width_cheapest_over_the_prompt_mix_wins_whichever_prompts_its_trials_fell_on():
    assert cpu_ms_per_token(8, 2, 50.0) < cpu_ms_per_token(2, 2, 50.0)  # the hard prompt alone favours w8
    mean = {w: sum(cpu_ms_per_token(w, i, 50.0) for i in range(3)) / 3 for w in CPU}
    assert min(mean, key=mean.get) == 2
    for first in range(3):  # the first request on each prompt in turn
        c = WidthChoice(start=2, widths=(1, 2, 4, 8))
        picks = []
        for k in range(45):
            i = (first + k) % 3
            w = c.decide(50.0, N).width
            picks.append(w)
            c.observe(w, cpu_ms_per_token(w, i, 50.0) * N, N, 50.0, N, PROMPTS[i])
        assert picks[24:].count(2) >= 0.7 * len(picks[24:]), (first, picks)


def test_a_miss_that_costs_less_than_a_round_trip_is_fitted_so():
    c = WidthChoice(start=2)
    for k in range(6):
        i = k % 3
        c.observe(2, cpu_ms_per_token(2, i, 50.0) * N, N, 50.0, N, PROMPTS[i])
    a, s = c.fitted(2)
    assert a == pytest.approx(7.2, abs=0.5) and s / 100 == pytest.approx(0.77, abs=0.1)  # of a 100 ms round trip


@pytest.mark.parametrize("kwargs,words", [({"widths": ()}, "need widths"), ({"widths": (0, 2)}, "need widths")])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        WidthChoice(**kwargs)


def test_an_observation_with_impossible_counts_is_refused():
    c = WidthChoice()
    with pytest.raises(ValueError, match="covered <= judged"):
        c.observe(2, 100.0, N, 10.0, 10, [11] * 8)
    with pytest.raises(ValueError, match="not one of"):
        c.observe(3, 100.0, N, 10.0, 10, [10] * 8)


def test_a_short_request_teaches_nothing():
    c = WidthChoice(start=2)
    c.observe(2, 10.0, 4, 50.0, 4, [4] * 8)
    assert c.decide(50.0, N).reason == "start"


def test_a_fit_starts_afresh_when_the_delay_moved():
    c = WidthChoice(start=2)
    for _ in range(4):
        observe(c, 2, 30.0, 200.0)  # at 200 ms the compute per token is high
    observe(c, 2, 8.0, 50.0)
    assert c.fitted(2)[0] == pytest.approx(8.0, abs=0.5)  # nothing of the 200 ms requests is left


def test_concurrent_requests_send_one_width_on_trial_at_a_time():
    c = WidthChoice(start=2, widths=(2, 8))
    observe(c, 2, 5.0, 50.0)
    picks = [c.decide(50.0, N) for _ in range(4)]  # four requests decided before any reports
    assert [p.reason for p in picks].count("trial") == 1 and picks[0] == WidthDecision(8, "trial")
    observe(c, 8, 5.0, 50.0)
    assert 8 not in c.trying


def test_a_trial_that_never_reports_may_be_issued_again():
    c = WidthChoice(start=2, widths=(2, 8), trial_expiry=3)
    observe(c, 2, 5.0, 50.0)
    picks = [c.decide(50.0, N).reason for _ in range(5)]
    assert picks.count("trial") == 2  # the first one's request failed: after 3 decisions it is re-issued


def test_a_request_the_cloud_mostly_filled_teaches_nothing():
    c = WidthChoice(start=2)
    c.observe(2, 3000.0, N, 50.0, 2, [2] * 8)  # 64 tokens, only 2 judged at a node of the tree
    assert c.costs == {} and c.judged == 0


def test_widths_past_what_the_edge_counts_are_refused():
    with pytest.raises(ValueError, match="need widths in 1..8"):
        WidthChoice(widths=(2, 16))
