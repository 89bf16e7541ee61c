"""The run's own references: the best fixed length and the best per-token threshold in hindsight, and the
compare experiment's two-sided checks against them (hand-made rounds; no broker, no models)."""
from __future__ import annotations

import pytest

from pipeline.analysis.frames import rounds_frame
from pipeline.analysis.hindsight import PROBE, best_fixed, best_threshold, round_costs, stop_length
from pipeline.experiments.compare import compare_checks, policy_rows
from tests.test_analysis import rnd

COST = {1: 100.0, 2: 150.0, 3: 200.0, 4: 250.0}
EASY, HARD = [0.95, 0.95, 0.95], [0.2, 0.2, 0.2]


def one_delay(n: int = 20) -> list[dict]:
    """Fixed lengths 1..4 whose rounds cost COST[L] and accept all but on every other prompt (none there);
    the probe drafts 4 with the head's scores: EASY where all 4 are accepted, HARD where none is."""
    rows = []
    for i in range(n):
        easy = i % 2 == 0
        for L, c in COST.items():
            rows.append(rnd(f"fixed-{L}-e-{i}", 0, L, L if easy else 0, c, delay=10.0, policy=f"fixed:{L}"))
        rows.append(rnd(f"probe-e-{i}", 0, 4, 4 if easy else 0, COST[4], delay=10.0, policy=PROBE,
                        stop_scores=EASY if easy else HARD))
        rows.append(rnd(f"auto-e-{i}", 0, 4 if easy else 1, 4 if easy else 0, COST[4] if easy else COST[1],
                        delay=10.0, policy="auto"))
    return rows


def test_a_threshold_rule_stops_at_the_first_token_where_a_rejection_becomes_likely_enough():
    assert stop_length([0.9, 0.5, 0.9], 4, 0.3) == 2
    assert stop_length([0.9, 0.5, 0.9], 4, 0.6) == 4
    assert stop_length([], 1, 0.0) == 1


def test_the_best_fixed_length_is_the_cheapest_per_token_on_the_same_prompts():
    policy, j = best_fixed(rounds_frame(one_delay()), range(1, 5))
    assert policy == "fixed:1" and j == pytest.approx(200.0 / 3)  # 2 tokens, then 1, for 100 ms each


def test_the_best_threshold_in_hindsight_stops_hard_drafts_early_and_lets_easy_ones_run():
    best = best_threshold(rounds_frame(one_delay()), range(1, 5))
    assert best["ms_per_token"] == pytest.approx((250.0 + 100.0) / (5 + 1))
    assert 1 - 0.95 ** 3 < best["threshold"] < 0.8 and best["rounds"] == 20


def with_last_and_cut_rounds(rows: list[dict]) -> list[dict]:
    """Every request of every policy ends with a target-only round (the budget left one token: draft 0, 40
    ms), and fixed:4's next-to-last round is cut by the budget to 2 tokens (150 ms): a live cell's rounds."""
    out = list(rows)
    for rid, policy in {(r["request_id"], r["policy"]) for r in rows}:
        out.append(rnd(rid, 9, 0, 0, 40.0, delay=10.0, policy=policy))
        if policy == "fixed:4":
            out.append(rnd(rid, 8, 2, 2, 150.0, delay=10.0, policy=policy))
    return out


def test_a_replayed_round_costs_what_fixed_rounds_of_its_length_cost_not_their_cells_cheaper_rounds():
    rounds = rounds_frame(with_last_and_cut_rounds(one_delay()))
    assert round_costs(rounds, range(1, 5)) == {(L, True): c for L, c in COST.items()}
    best = best_threshold(rounds, range(1, 5))  # an easy draft of 4 (250 ms, 5 tokens), a hard one cut at 1
    assert best["ms_per_token"] == pytest.approx((250.0 + 100.0) / (5 + 1)) and best["rounds"] == 20


def test_a_requests_first_round_is_costed_apart_from_its_later_ones():
    rows = [rnd("f-0", 0, 2, 2, 130.0, policy="fixed:2"), rnd("f-0", 1, 2, 2, 100.0, policy="fixed:2"),
            rnd("f-0", 2, 2, 2, 110.0, policy="fixed:2"), rnd("f-0", 3, 1, 1, 60.0, policy="fixed:2")]
    assert round_costs(rounds_frame(rows), [1, 2]) == {(2, True): 130.0, (2, False): 105.0}


def test_a_missing_gap_of_auto_to_a_reference_neither_crashes_the_check_nor_passes_it():
    rows = policy_rows(rounds_frame(one_delay()), ["auto", "fixed:1", "fixed:4", PROBE], ["delay"], references=True,
                       lengths=range(1, 5))
    for r in rows:
        if r["policy"] == "auto":
            r["vs_best_threshold"] = {"gap_pct": None, "ci": [None, None], "pairs": 0}
    checks = compare_checks(rows, ["fixed:4"])
    (within,) = [d for d in checks["detail"] if "check" in d]
    assert within["reference"] == "fixed:1"  # the one reference auto has a gap to
    rows = [{**r, "vs_best_fixed": {"gap_pct": None, "ci": [None, None]}} if r["policy"] == "auto" else r for r in rows]
    assert not compare_checks(rows, ["fixed:4"])["auto_within_1pct"]


def test_a_policy_meets_the_replay_on_its_drafted_rounds_only():
    rows = policy_rows(rounds_frame(with_last_and_cut_rounds(one_delay())), ["auto", "fixed:1", "fixed:4", PROBE],
                       ["delay"], references=True, lengths=range(1, 5))
    auto = next(r for r in rows if r["policy"] == "auto")
    assert auto["vs_best_threshold"]["gap_pct"] == pytest.approx(0.0)  # auto plays the best threshold's rounds
    assert auto["ms_per_token"] == pytest.approx(430.0 / 8)  # its target-only last rounds count in its ms/token


def test_no_threshold_reference_without_probe_scores():
    rows = [r for r in one_delay() if r["policy"] != PROBE]
    assert best_threshold(rounds_frame(rows), range(1, 5)) is None


def test_auto_is_checked_against_the_threshold_in_hindsight_on_both_sides_and_rivals_by_name():
    rows = policy_rows(rounds_frame(one_delay()), ["auto", "fixed:1", "fixed:4", PROBE], ["delay"], references=True,
                       lengths=range(1, 5))
    ref = next(r for r in rows if r.get("reference") == "best_threshold")
    assert ref["policy"].startswith("hindsight-threshold:") and ref["ms_per_token"] == pytest.approx(58.33)
    auto = next(r for r in rows if r["policy"] == "auto")
    assert auto["vs_best_threshold"]["gap_pct"] == pytest.approx(0.0)
    checks = compare_checks(rows, ["fixed:4"])
    assert checks["reference"] == "best_threshold" and checks["auto_within_1pct"] and checks["auto_ahead_where_clear"]
    # auto far below its reference fails the check too: the reference would not be the strongest
    for r in rows:
        if r["policy"] == "auto":
            r["vs_best_threshold"] = {"gap_pct": -3.0, "ci": [-4.0, -2.0]}
    assert not compare_checks(rows, ["fixed:4"])["auto_within_1pct"]


def test_a_rival_clearly_ahead_of_auto_fails_the_check_and_is_named():
    rows = policy_rows(rounds_frame(one_delay()), ["auto", "fixed:1", "fixed:4"], ["delay"], references=True,
                       lengths=range(1, 5))
    for r in rows:
        if r["policy"] == "fixed:1":
            r["vs_auto"] = {"gap_pct": -5.0, "ci": [-7.0, -3.0]}
    checks = compare_checks(rows, ["fixed:1", "fixed:4"])
    assert not checks["auto_ahead_where_clear"]
    assert {d["rival"] for d in checks["detail"] if d.get("clear") and not d["auto_ahead"]} == {"fixed:1"}


def test_auto_is_checked_against_the_faster_reference_where_one_token_a_round_beats_every_threshold():
    # one token a round at 40 ms; the head is sure of every easy draft, so no threshold stops it early
    rows = [{**r, "round_ms": 40.0} if r["policy"] == "fixed:1" else
            {**r, "stop_scores": [1.0, 1.0, 1.0]} if r["policy"] == PROBE and r["accepted"] else r for r in one_delay()]
    prows = policy_rows(rounds_frame(rows), ["auto", "fixed:1", "fixed:4", PROBE], ["delay"], references=True,
                        lengths=range(1, 5))
    checks = compare_checks(prows, ["fixed:4"])
    (within,) = [d for d in checks["detail"] if "check" in d]
    assert checks["reference"] == "best_fixed" and within["reference"] == "fixed:1"
    assert within["auto_gap_pct"] > 100 and not checks["auto_within_1pct"]  # 58.3 ms/token against 26.7
    threshold = next(r for r in prows if r.get("reference") == "best_threshold")
    assert threshold["ms_per_token"] == pytest.approx(48.33)  # (250 + 40) / 6
