"""`edge --stream-tree auto`: the stream tree or rounds per request, by the cost rule on measured costs."""
from __future__ import annotations

import pytest

from control.stream_choice import CHAIN, STREAM, StreamChoice


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
    assert c.choose(50.0, 64) == CHAIN


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
