"""Log analysis and calibration on hand-made logs with known answers (no broker, no models)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from control.profile import load_profile, parametric_profile
from control.theory import best_length, critical_delay, ms_per_token
from pipeline.analysis import analyze_run, calibrate, load_run
from tests.conftest import run_cli


def rnd(rid: str, r: int, L: int, a: int, round_ms: float, delay: float = 10.0, policy: str = "fixed:2",
        state: str | None = None, **kw) -> dict:
    tokens = kw.pop("tokens", a + 1)
    return {"node": "edge-1", "event": "round", "request_id": rid, "round": r, "attempt": 0, "edge_id": "edge-1",
            "verifier_id": "cloud-1", "draft_length": L, "accepted": a, "tokens": tokens, "round_ms": round_ms,
            "draft_ms": 1.0, "verify_ms": 2.0, "queue_ms": 0.5, "network_ms": round_ms - 3.5, "delay_ms": delay,
            "edge_queue_ms": 0.0, "link_ms": 2 * delay, "stall_ms": 0.0, "policy": policy, "policy_version": 0,
            "channel_state": state, "context_resent": r == 0, "context_len": 10 + r, "level": "info",
            "ts": f"2026-11-29T08:00:{r:02d}.000000Z", **kw}


def write_log(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(x + "\n" for x in extra_lines))


def test_ms_per_token_is_the_ratio_of_sums_per_policy_and_delay(tmp_path):
    rows = [rnd("a", 0, 2, 2, 30.0), rnd("a", 1, 2, 0, 20.0), rnd("b", 0, 2, 1, 25.0),
            rnd("c", 0, 3, 3, 80.0, delay=40.0), rnd("d", 0, 0, 0, 60.0, delay=40.0, policy="target-only")]
    write_log(tmp_path / "edge-1.jsonl", rows)
    a = analyze_run(tmp_path)
    g = {(x["policy"], x["delay"]): x for x in a["groups"]}
    near = g[("fixed:2", "10.0")]
    assert near["rounds"] == 3 and near["tokens"] == 6 and near["ms_per_token"] == pytest.approx(75.0 / 6)
    assert near["acceptance_rate"] == pytest.approx(3 / 6) and near["lengths_chosen"] == {"2": 3}
    assert near["ms_per_token_ci"][0] <= near["ms_per_token"] <= near["ms_per_token_ci"][1]
    assert g[("fixed:2", "40.0")]["ms_per_token"] == pytest.approx(20.0)
    assert g[("target-only", "40.0")]["lengths_chosen"] == {} and g[("target-only", "40.0")]["tokens"] == 1


def test_corrupt_and_truncated_lines_are_counted_and_skipped(tmp_path):
    rows = [rnd("a", i, 2, 1, 10.0) for i in range(4)]
    write_log(tmp_path / "edge-1.jsonl", rows, ['{"event": "round", "request_id": "x", "roun', "not json at all",
                                                "[1, 2, 3]", ""])
    frames = load_run(tmp_path)
    assert frames.rounds.height == 4 and frames.bad_lines == {"edge-1.jsonl": 3}


def test_a_line_of_valid_json_with_a_wrong_type_is_counted_bad_and_the_rest_kept(tmp_path):
    rows = [rnd("a", 0, 2, 1, 10.0), rnd("a", 1, 2, 1, 11.0) | {"round_ms": "oops"}, rnd("a", 2, 2, 2, 12.0)]
    write_log(tmp_path / "edge-1.jsonl", rows)
    frames = load_run(tmp_path)
    assert frames.rounds["round_ms"].to_list() == [10.0, 12.0] and frames.bad_lines == {"edge-1.jsonl": 1}


def test_channel_states_get_their_own_rows_when_a_run_has_several(tmp_path):
    rows = [rnd("a", i, 2, 1, 10.0 + i, state=str(i % 2)) for i in range(6)]
    write_log(tmp_path / "edge-1.jsonl", rows)
    assert sorted(g["channel_state"] for g in analyze_run(tmp_path)["groups"]) == ["0", "1"]


def synthetic_run(path, profile, delays, lengths, rounds_per_cell=60, seed=0, jitter=0.05):
    """Rounds drawn from `profile` (C(L) with jitter, A from the survival), as an edge would log them."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in delays:
        for L in lengths:
            for i in range(rounds_per_cell):
                a_full = int((profile.survival > rng.random()).sum())
                a = min(a_full, L)
                c = float(profile.compute_ms[L - 1] * (1 + jitter * rng.uniform(-1, 1)))
                rows.append(rnd(f"r-{d}-{L}-{i // 10}", i % 10, L, a, c + 2 * d, delay=d, policy=f"fixed:{L}"))
    write_log(path / "edge-1.jsonl", rows)


def test_calibration_recovers_compute_and_survival_from_a_synthetic_run(tmp_path):
    truth = parametric_profile("truth", 0.7, 20.0, 5.0, 30.0, 2.0, 6)
    synthetic_run(tmp_path, truth, [0.0, 50.0], range(1, 7), rounds_per_cell=200)
    prof = calibrate(tmp_path)
    c = np.array(list(prof["round_compute_ms"].values()))
    assert np.allclose(c, truth.compute_ms, rtol=0.02)
    for i, (s, (lo, hi)) in enumerate(zip(prof["survival"], prof["survival_ci"])):
        assert lo <= truth.survival[i] <= hi or abs(s - truth.survival[i]) < 0.03, (i, s, truth.survival[i])


def test_calibrate_then_theory_predicts_the_best_lengths_of_the_system_that_ran(tmp_path):
    truth = parametric_profile("jetson-like", 0.55, 72.0, 0.0, 67.0, 0.0, 8)
    synthetic_run(tmp_path, truth, [0.0, 100.0], range(1, 9), rounds_per_cell=150, seed=3)
    calibrate(tmp_path, tmp_path / "cal.json")
    cal = load_profile(tmp_path / "cal.json")
    assert critical_delay(cal) == pytest.approx(critical_delay(truth), rel=0.2)
    for d in (0.0, 20.0, 50.0, 100.0, 150.0):
        j = ms_per_token(truth, d)
        best = best_length(truth, d)[0]
        clear = sorted(j)[1] > 1.03 * j.min()  # only where the runner-up is clearly worse
        assert not clear or best_length(cal, d)[0] == best, d


def test_tokens_per_round_measured_per_length_predict_what_the_survival_cannot(tmp_path):
    # acceptance runs in stretches: length-1 rounds accept more often than the longer ones, so the
    # survival pooled over every length understates what L = 1 yields; B(L) measured per length does not
    truth = parametric_profile("t", 0.7, 72.0, 0.0, 67.0, 0.0, 4)
    rng = np.random.default_rng(5)
    rows, first = [], {1: 0.92, 2: 0.80, 3: 0.80, 4: 0.80}
    for L in range(1, 5):
        for i in range(2000):
            a = 0 if rng.random() > first[L] else 1 + int((0.9 ** np.arange(1, L) > rng.random()).sum())
            rows.append(rnd(f"r-{L}-{i // 10}", i % 10, L, a, float(truth.compute_ms[L - 1]), delay=0.0,
                            policy=f"fixed:{L}"))
    write_log(tmp_path / "edge-1.jsonl", rows)
    prof = calibrate(tmp_path)
    tokens = np.array([prof["tokens_per_round"][str(L)] for L in range(1, 5)])
    b_true = np.array([1 + first[L] * (1 + sum(0.9 ** np.arange(1, L))) for L in range(1, 5)])
    assert np.allclose(tokens, b_true, rtol=0.02)
    cal = load_profile(_write(tmp_path / "cal.json", prof))
    true_dc = critical_delay(truth, b_true)
    assert critical_delay(cal, tokens) == pytest.approx(true_dc, rel=0.15)  # 37 vs 41 ms
    assert critical_delay(cal) < 0.6 * true_dc  # 19 ms: the pooled survival's B(1) is 1.82, not 1.92


def _write(path, data: dict):
    path.write_text(json.dumps(data))
    return path


def test_lengths_nobody_played_are_extrapolated_and_listed(tmp_path):
    truth = parametric_profile("t", 0.8, 10.0, 0.0, 20.0, 0.0, 6)
    synthetic_run(tmp_path, truth, [10.0], [2, 5], rounds_per_cell=100, jitter=0.0)
    prof = calibrate(tmp_path, max_length=6)
    assert prof["extrapolated"]["lengths"] == [1, 3, 4, 6] and prof["extrapolated"]["positions"] == [6]
    assert prof["round_compute_ms"]["3"] == pytest.approx(50.0, rel=0.01)  # on the line through 40 and 70


def test_a_fit_on_too_few_rounds_per_length_says_so_in_a_warning_and_in_the_result(tmp_path):
    truth = parametric_profile("t", 0.7, 20.0, 5.0, 30.0, 2.0, 4)
    synthetic_run(tmp_path, truth, [10.0], [1, 2], rounds_per_cell=40)
    thin = [rnd(f"thin-{L}-{i}", i, L, 0, float(truth.compute_ms[L - 1]) + 20.0, policy=f"fixed:{L}")
                          for L in (3, 4) for i in range(6 if L == 3 else 19)]
    with (tmp_path / "edge-1.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in thin))
    prof = calibrate(tmp_path)
    assert prof["min_rounds_per_length"] == 30 and prof["too_few_rounds"] == [3, 4]
    assert any("lengths 3, 4 rests on fewer than 30 rounds (L=3: 6, L=4: 19)" in w for w in prof["warnings"])
    out = run_cli("calibrate", str(tmp_path), timeout=120).stdout
    assert "warning: C(L) of lengths 3, 4 rests on fewer than 30 rounds" in out


def test_a_fit_on_enough_rounds_of_a_growing_compute_has_no_warning(tmp_path):
    truth = parametric_profile("t", 0.7, 20.0, 5.0, 30.0, 2.0, 4)
    synthetic_run(tmp_path, truth, [10.0], range(1, 5), rounds_per_cell=30)
    prof = calibrate(tmp_path)
    assert prof["warnings"] == [] and prof["too_few_rounds"] == [] and prof["compute_monotone"] is True


def test_a_compute_that_falls_with_the_length_is_flagged_non_monotone(tmp_path):
    cost = {1: 40.0, 2: 60.0, 3: 55.0, 4: 80.0}  # L = 3 cheaper than L = 2: noise a fit must not pass silently
    write_log(tmp_path / "edge-1.jsonl", [rnd(f"r-{L}-{i // 10}", i % 10, L, 1, cost[L], delay=0.0,
                                              policy=f"fixed:{L}") for L in cost for i in range(40)])
    prof = calibrate(tmp_path)
    assert prof["compute_monotone"] is False
    assert prof["compute_drops"] == [{"from": 2, "to": 3, "ms": [60.0, 55.0]}]
    assert prof["warnings"] == ["C(L) is not monotone: it falls from L=2 (60.00 ms) to L=3 (55.00 ms); a longer "
                                "draft never costs less, so this is noise (too few rounds, or a busy machine)"]
    out = run_cli("calibrate", str(tmp_path), timeout=120).stdout
    assert "warning: C(L) is not monotone: it falls from L=2" in out


def test_analyze_prints_a_table_and_json_on_request(tmp_path):
    write_log(tmp_path / "edge-1.jsonl", [rnd("a", i, 2, 1, 10.0) for i in range(5)])
    table = run_cli("analyze", str(tmp_path), timeout=120)
    assert table.returncode == 0 and "ms/token" in table.stdout and "fixed:2" in table.stdout
    as_json = json.loads(run_cli("analyze", str(tmp_path), "--json", timeout=120).stdout)
    assert as_json["groups"][0]["rounds"] == 5


def test_calibrate_writes_a_profile_the_theory_command_reads(tmp_path):
    truth = parametric_profile("t", 0.7, 20.0, 5.0, 30.0, 2.0, 4)
    synthetic_run(tmp_path, truth, [10.0], range(1, 5), rounds_per_cell=30)
    assert run_cli("calibrate", str(tmp_path), "-o", str(tmp_path / "p.json"), timeout=120).returncode == 0
    r = run_cli("theory", "--profile", str(tmp_path / "p.json"), "--json", timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["rows"]


def test_an_empty_run_directory_is_one_clear_error(tmp_path):
    r = run_cli("analyze", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "no *.jsonl logs" in r.stderr and r.stderr.count("\n") == 1
