"""The phase experiment's arithmetic on hand-made rounds with a known critical delay (no broker, no models)."""
from __future__ import annotations

import pytest

from pipeline.analysis.frames import rounds_frame
from pipeline.experiments.lab import measured
from pipeline.experiments.phase import edge_of, phase_result
from tests.test_analysis import rnd

COMPUTE = {1: 140.0, 2: 212.0, 3: 284.0}
# accepted counts of a request's 10 rounds: B(1) = 1.9, B(2) = 2.6, B(3) = 3.2 tokens per round
ACCEPTED = {1: [1] * 9 + [0], 2: [2] * 7 + [1, 1, 0], 3: [3] * 5 + [2, 2, 2, 1, 0]}
DELAYS = [0.0, 20.0, 40.0, 60.0]


def cell_rows(edge: str, L: int, delay: float, requests: int = 3, compute: float | None = None) -> list[dict]:
    c = COMPUTE[L] if compute is None else compute
    return [rnd(f"fixed-{L}-{edge}-{i}", r, L, a, c + 2 * delay, delay=delay, policy=f"fixed:{L}", edge_id=edge)
            for i in range(requests) for r, a in enumerate(ACCEPTED[L])]


def phase_rows() -> list[dict]:
    rows = [row for L in COMPUTE for row in cell_rows("edge-cal", L, 0.0, requests=6)]
    return rows + [row for d in DELAYS for L in COMPUTE for row in cell_rows(edge_of(d), L, d)]


def test_measured_and_predicted_critical_delay_meet_where_the_lines_of_one_and_two_tokens_cross():
    res = phase_result(rounds_frame(phase_rows()), DELAYS, [1, 2, 3], 3)
    exact = (212.0 * 1.9 - 140.0 * 2.6) / (2 * (2.6 - 1.9))  # 27.71 ms: L = 2 overtakes L = 1 first
    dc = res["critical_delay_ms"]
    assert dc["measured"] == pytest.approx(exact, abs=0.01) and dc["predicted"] == pytest.approx(exact, abs=0.01)
    assert dc["within_20pct"] and res["best_length_agrees_everywhere"]
    assert [r["predicted_best"] for r in res["rows"]] == [1, 1, 2, 3]


def test_the_warm_up_wave_is_left_out_of_every_number():
    slow_start = [dict(row, request_id="warmup-" + row["request_id"])
                  for row in cell_rows(edge_of(0.0), 1, 0.0, compute=400.0) + cell_rows("edge-cal", 2, 0.0, compute=9.0)]
    clean = phase_result(rounds_frame(phase_rows()), DELAYS, [1, 2, 3], 3)
    warmed = phase_result(measured(rounds_frame(phase_rows() + slow_start)), DELAYS, [1, 2, 3], 3)
    assert warmed["critical_delay_ms"] == clean["critical_delay_ms"] and warmed["rows"] == clean["rows"]


def test_a_grid_where_longer_drafts_already_win_at_zero_delay_is_refused_not_reported_within_20pct():
    cheap_two = {1: 140.0, 2: 150.0, 3: 284.0}  # J(2, 0) = 57.7 < J(1, 0) = 73.7 ms/token: no transition to find
    rows = [row for L in cheap_two for row in cell_rows("edge-cal", L, 0.0, requests=6, compute=cheap_two[L])]
    rows += [row for d in DELAYS for L in cheap_two for row in cell_rows(edge_of(d), L, d, compute=cheap_two[L])]
    res = phase_result(rounds_frame(rows), DELAYS, [1, 2, 3], 3)
    assert res["critical_delay_ms"]["measured"] == 0.0 and not res["critical_delay_ms"]["within_20pct"]
    assert {r.check for r in res["refused"]} == {"no_transition"}
    assert any(r.why.startswith("measured:") for r in res["refused"])


def test_a_cell_with_too_few_rounds_is_refused():
    res = phase_result(rounds_frame([r for r in phase_rows() if not (r["edge_id"] == edge_of(60.0)
                                                                     and r["policy"] == "fixed:3" and r["round"] > 2)]),
                       DELAYS, [1, 2, 3], 3)
    [refusal] = res["refused"]
    assert refusal.check == "too_few_rounds" and "fixed:3 at 60 ms with 9" in refusal.why


def test_a_crossing_the_first_wave_cannot_pin_gets_more_rounds_at_the_delays_around_it():
    from pipeline.experiments.phase import refine_delays
    from pipeline.experiments.refusals import Refusal

    pinned = {"refused": [], "critical_delay_ms": {"measured_ci": [8.0, 12.0], "predicted_ci": [9.0, 13.0]}}
    assert refine_delays(pinned, [0.0, 10.0, 20.0, 40.0, 70.0]) == []
    loose = {"refused": [Refusal("lines_too_close", "...")],
             "critical_delay_ms": {"measured_ci": [0.0, 30.0], "predicted_ci": [9.0, 13.0]}}
    assert refine_delays(loose, [0.0, 10.0, 20.0, 40.0, 70.0]) == [0.0, 10.0, 20.0, 40.0]
    machine = {"refused": [Refusal("machine_load", "...")], "critical_delay_ms": {}}
    assert refine_delays(machine, [0.0, 10.0, 20.0, 40.0]) == []  # more rounds on a loaded machine would not help
