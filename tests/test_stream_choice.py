"""`edge --stream-tree auto`: the stream tree or rounds per request, by the cost rule on measured costs."""
from __future__ import annotations

import pytest

from control.stream_choice import CHAIN, STREAM, Decision, StreamChoice


def _measured(chain_compute: float = 3.0, chain_trips: float = 0.25, stream_compute: float = 5.0,
              stream_misses: float = 0.08, one_way_ms: float = 50.0, tokens: int = 64) -> StreamChoice:
    """A choice that has seen one request of each mode, built from per-token costs at `one_way_ms`."""
    c = StreamChoice()
    rounds = round(chain_trips * tokens)
    c.observe(CHAIN, tokens * chain_compute + rounds * 2 * one_way_ms, tokens, rounds, one_way_ms)
    misses = round(stream_misses * tokens)
    c.observe(STREAM, tokens * stream_compute + (misses + 1) * 2 * one_way_ms, tokens, misses, one_way_ms)
    return c


def test_each_mode_is_tried_once_chain_first():
    c = StreamChoice()
    assert c.choose(50.0, 64) == CHAIN
    c.observe(CHAIN, 1600.0, 64, 16, 50.0)
    assert c.choose(50.0, 64) == STREAM


def test_the_compute_term_is_what_is_left_after_the_round_trips():
    c = _measured()
    assert c.modes[CHAIN].compute_ms == pytest.approx(3.0)
    assert c.modes[STREAM].compute_ms == pytest.approx(5.0)
    assert c.modelled(CHAIN, 0.0, 64) == pytest.approx(3.0)


def test_over_a_long_link_the_stream_tree_runs_and_at_zero_delay_the_chain():
    c = _measured()
    assert c.choose(50.0, 64) == STREAM
    assert c.choose(0.0, 64) == CHAIN


def test_a_stream_tree_that_misses_as_often_as_the_chain_rounds_is_never_chosen():
    c = _measured(chain_trips=0.25, stream_misses=0.25)
    decisions = [c.decide(50.0, 64) for _ in range(16)]
    assert all(d.mode == CHAIN or d.reason == "scheduled" for d in decisions)  # only ever re-tried


def test_the_averages_follow_newer_requests():
    c = _measured()
    for _ in range(20):  # the stream tree's compute got dear (a loaded edge)
        c.observe(STREAM, 64 * 40.0 + 6 * 2 * 50.0, 64, 5, 50.0)
    assert c.choose(50.0, 64) == CHAIN


def test_a_short_request_teaches_nothing_and_a_bad_mode_is_refused():
    c = StreamChoice()
    c.observe(CHAIN, 80.0, 8, 1, 0.0)  # a cold 8-token warm-up: its prefill would pass for compute
    assert c.modes[CHAIN].n == 0 and c.choose(0.0, 64) == CHAIN
    with pytest.raises(ValueError, match="unknown mode 'tree'"):
        c.observe("tree", 1.0, 1, 0, 0.0)


# --- the bound: no stream request where it cannot pay ------------------------------------------
# Live numbers: at 0 ms the chain measured ~2.2 ms/token at 0.22 rounds/token, and its rounds saw the
# broker's ~0.4 ms one way; at 50 ms the same chain cost ~25 ms/token.

def _chain_only(compute: float = 2.1, trips: float = 0.22, one_way_ms: float = 0.4, tokens: int = 64) -> StreamChoice:
    c = StreamChoice()
    rounds = round(trips * tokens)
    c.observe(CHAIN, tokens * compute + rounds * 2 * one_way_ms, tokens, rounds, one_way_ms)
    return c


def test_at_zero_delay_the_stream_tree_is_never_tried_and_every_request_runs_the_chain():
    c = _chain_only()
    decisions = [c.decide(0.4, 64) for _ in range(40)]
    assert {d.mode for d in decisions} == {CHAIN}
    assert decisions[0].reason == "bound"


def test_at_fifty_ms_the_stream_tree_is_tried_after_the_chain():
    c = _chain_only(one_way_ms=50.0)
    assert c.decide(50.0, 64) == c.decide(50.0, 64)  # no state moves before the trial is measured
    assert c.decide(50.0, 64).mode == STREAM and c.decide(50.0, 64).reason == "trial"


def test_the_bound_is_the_chain_less_its_round_trips_plus_the_streams_first_trip():
    c = _chain_only(compute=3.0, trips=0.25, one_way_ms=10.0)
    assert c.stream_floor(10.0, 64) == pytest.approx(3.0 + 20.0 / 64)
    # best case gain (0.25 - 1/64) * 2d against 30 % of the chain (3 + 0.5d): pays from d ~ 2.8 ms
    assert not c.stream_can_pay(2.6, 64) and c.stream_can_pay(3.0, 64)


def test_a_measured_stream_tree_that_looks_cheaper_still_does_not_run_where_the_bound_forbids():
    c = _measured(chain_compute=2.1, chain_trips=0.22, stream_compute=1.0, stream_misses=0.05, one_way_ms=0.4)
    assert c.modelled(STREAM, 0.4, 64) < c.modelled(CHAIN, 0.4, 64)  # a noisy stream measurement
    assert c.choose(0.4, 64) == CHAIN


# --- re-exploration -----------------------------------------------------------------------------

def test_the_unused_mode_is_retried_once_when_the_delay_moved():
    c = _measured(one_way_ms=50.0)  # chain measured at 50 ms, stream tree at 50 ms: the stream runs
    assert c.decide(50.0, 64).mode == STREAM
    c.observe(STREAM, 64 * 5.0 + 6 * 2 * 20.0, 64, 5, 20.0)  # the link got faster, the stream saw 20 ms
    assert c.decide(20.0, 64) == Decision(CHAIN, "delay_changed")
    c.observe(CHAIN, 64 * 3.0 + 16 * 2 * 20.0, 64, 16, 20.0)
    assert c.decide(20.0, 64).reason != "delay_changed"


def test_a_small_delay_wobble_is_not_a_change():
    c = _measured(one_way_ms=50.0)
    assert [c.decide(d, 64).reason for d in (50.0, 51.5, 49.0, 52.0)] == ["cheaper"] * 4


def test_a_close_rival_is_retried_on_a_doubling_schedule():
    c = _measured(stream_compute=3.0, stream_misses=0.27)  # chain 28 ms/token, stream 31.1: within 25 %
    modes = [c.choose(50.0, 64) for _ in range(30)]
    retries = [i + 1 for i, m in enumerate(modes) if m == STREAM]
    assert retries == [1, 3, 7, 15]  # after 1, 2, 4, 8 requests on the chain


def test_a_far_rival_is_never_retried_at_a_steady_delay():
    c = _measured()  # at 50 ms the chain is 28 ms/token, the stream tree 14.9
    assert {c.choose(50.0, 64) for _ in range(64)} == {STREAM}


def test_the_schedule_restarts_when_the_cheaper_mode_changes():
    c = _measured(stream_compute=3.0, stream_misses=0.27)
    assert [c.choose(50.0, 64) for _ in range(4)] == [STREAM, CHAIN, STREAM, CHAIN]
    c.observe(STREAM, 64 * 1.0 + 9 * 2 * 50.0, 64, 8, 50.0)  # the stream tree got cheaper: now it leads
    assert [c.choose(50.0, 64) for _ in range(4)] == [CHAIN, STREAM, CHAIN, STREAM]


def test_a_negative_delay_is_refused():
    with pytest.raises(ValueError, match="delay >= 0"):
        StreamChoice().decide(-1.0, 64)


def test_the_first_few_requests_count_equally():
    c = StreamChoice()
    for compute in (30.0, 12.0, 12.0):  # a hard first prompt, then two ordinary ones
        c.observe(CHAIN, 64 * compute, 64, 0, 0.0)
    assert c.modes[CHAIN].compute_ms == pytest.approx(18.0)
