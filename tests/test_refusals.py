"""What makes an experiment refuse its own numbers (pure checks on hand-made rounds; no broker, no models)."""
from __future__ import annotations

from pipeline.analysis.frames import rounds_frame
from pipeline.experiments.refusals import (
    crossing_refusals, emulation_overruns, failed_requests, summary, too_few_rounds, transport_overhead,
)
from tests.test_analysis import rnd

JETSON = {"edge": {"name": "jetson", "draft_ms_fixed": 4.0, "draft_ms_per_token": 69.0, "jitter": 0.05},
          "cloud": {"name": "3090", "verify_ms_fixed": 60.0, "verify_ms_per_token": 3.0, "jitter": 0.05}}


def emulated_rounds(n: int, slow: int = 0, overhead_ms: float = 2.0) -> list[dict]:
    """n rounds of 2 drafted tokens on the emulated devices; `slow` of them drafted slower than the device."""
    rows = []
    for i in range(n):
        draft = 142.0 if i >= slow else 170.0  # the device: 4 + 69 * 2 = 142 ms (+5 % jitter at most: 149.1)
        rows.append(rnd(f"r-{i}", i + 1, 2, 1, draft + 69.0 + 20.0 + overhead_ms, delay=10.0, draft_ms=draft,
                        verify_ms=69.0, network_ms=20.0 + overhead_ms, context_resent=False))
    return rows


def test_rounds_on_the_devices_clock_pass():
    assert emulation_overruns(rounds_frame(emulated_rounds(100)), JETSON) is None


def test_rounds_that_drafted_slower_than_the_emulated_device_make_the_machine_too_loaded():
    refusal = emulation_overruns(rounds_frame(emulated_rounds(100, slow=10)), JETSON)
    assert refusal.check == "machine_load" and refusal.why.startswith("10.0 % of rounds")


def test_a_few_slow_rounds_are_tolerated():
    assert emulation_overruns(rounds_frame(emulated_rounds(100, slow=4)), JETSON) is None


def test_a_tree_round_is_held_to_its_depths_draft_steps_not_its_node_count():
    """A 2x3 tree (6 nodes) is drafted in 2 batched steps: the device's 142 ms, as a chain of 2."""
    rows = emulated_rounds(100)
    trees = [r | {"draft_length": 6, "tree_depth": 2, "verify_ms": 60.0 + 3.0 * 7} for r in rows]
    assert emulation_overruns(rounds_frame(trees), JETSON) is None
    slow = [r | {"draft_ms": 170.0} if i < 10 else r for i, r in enumerate(trees)]
    assert emulation_overruns(rounds_frame(slow), JETSON).check == "machine_load"


def test_milliseconds_added_outside_the_devices_and_link_make_the_machine_too_loaded():
    assert transport_overhead(rounds_frame(emulated_rounds(50, overhead_ms=2.0))) is None
    refusal = transport_overhead(rounds_frame(emulated_rounds(50, overhead_ms=9.0)))
    assert refusal.check == "machine_load" and "median 9.0 ms" in refusal.why


def test_lines_that_cross_at_zero_in_many_resamples_are_too_close_to_separate():
    assert crossing_refusals(10.2, 11.0, [9.0, 10.0, 11.0, 12.0, 0.0]) == []
    [refusal] = crossing_refusals(10.2, 11.0, [9.0, None, 0.0, 12.0, 0.0])
    assert refusal.check == "lines_too_close" and "60 %" in refusal.why


def test_no_crossing_or_a_zero_critical_delay_is_no_transition():
    checks = {(r.check, r.why.split(":")[0]) for r in crossing_refusals(None, 0.0, [])}
    assert checks == {("no_transition", "measured"), ("no_transition", "predicted")}


def test_failed_requests_and_thin_cells_are_named():
    assert failed_requests(1, 100) is None
    assert failed_requests(5, 100).why.startswith("5 of 100 requests failed")
    assert too_few_rounds({"a": 50, "b": 3, "c": 7}).why == "2 cell(s) have fewer than 20 rounds (fewest: b with 3)"
    assert summary([failed_requests(5, 100)]).startswith("failed_requests: 5 of 100")
