"""`specstop bench trees` prints one row per depth x width shape, width 1 labelled the chain."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_trees_prints_a_row_per_shape_and_the_best_of_each_kind():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "trees", "--json", "--repeats", "1",
                          "--max-depth", "2", "--max-width", "2", "--max-new-tokens", "6"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    res = json.loads(out)
    assert [(r["depth"], r["width"]) for r in res["rows"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [r["kind"] for r in res["rows"]] == ["chain", "tree", "chain", "tree"]
    assert all(r["tokens_per_target_forward"] >= 1.0 for r in res["rows"])
    assert set(res["best"]) == {"chain@0ms", "tree@0ms", "chain@50ms", "tree@50ms"}


@pytest.mark.slow
def test_bench_trees_with_optimal_nodes_adds_the_calibrated_optimal_trees_and_the_best_per_delay(tmp_path):
    table = tmp_path / "table.json"
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "trees", "--json", "--repeats", "1",
                          "--max-depth", "2", "--max-width", "2", "--max-new-tokens", "6", "--optimal-nodes", "4,16",
                          "--delays", "0,50", "--online-rounds", "10", "--table-out", str(table)],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    res = json.loads(out)
    assert [r["requested_nodes"] for r in res["optimal"]["rows"]] == [4, 16]
    assert all(r["kind"] == "optimal" and r["nodes"] <= r["requested_nodes"] for r in res["optimal"]["rows"])
    assert set(res["best_overall"]) == {"0", "50"}
    assert all(v["chain_over_best"] >= 1.0 for v in res["best_overall"].values())
    assert set(res["online"]) == {"0", "50"} and all(v["rounds"] >= 10 for v in res["online"].values())
    saved = json.loads(table.read_text())
    assert len(saved["accept"]) == 24 and set(saved["cost"]) == {"draft_step_ms", "draft_node_ms", "verify_ms",
                                                                  "verify_node_ms"}


def test_table_out_without_optimal_nodes_is_refused():
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "trees", "--table-out", "x.json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--optimal-nodes" in r.stderr


def test_the_live_row_is_each_requests_round_time_over_its_tokens_then_the_median():
    from pipeline.bench.trees_live import _row

    def rnd(rid, ms, tokens):
        return {"request_id": rid, "round_ms": ms, "tokens": tokens, "draft_ms": 1.0, "verify_ms": 2.0,
                "draft_length": 6}

    row = _row([rnd("a", 100, 4), rnd("a", 100, 1), rnd("b", 60, 3), rnd("c", 90, 3), rnd("c", 30, 1)])
    assert row["ms_per_token_per_request"] == [40.0, 20.0, 30.0] and row["ms_per_token_median"] == 30.0
    assert row["rounds"] == 5 and row["tokens_per_round_mean"] == 2.4


def test_a_repeated_live_row_reports_the_true_median_of_its_runs_not_the_faster_middle_one():
    from pipeline.bench.trees_live import median_row

    runs = [{"ms_per_token_median": 89.8, "wall_ms_per_token_median": 95.0, "ttft_ms_median": 300.0, "run_dir": "slow"},
            {"ms_per_token_median": 81.9, "wall_ms_per_token_median": 85.0, "ttft_ms_median": 200.0, "run_dir": "fast"}]
    row = median_row(runs)
    assert row["ms_per_token_median"] == 85.85 and row["wall_ms_per_token_median"] == 90.0
    assert row["ttft_ms_median"] == 250.0
    assert row["ms_per_token_runs"] == [89.8, 81.9]
    assert median_row(runs[:1])["ms_per_token_median"] == 89.8


def test_the_live_rows_with_rounds_in_flight_add_a_chain_per_length_and_a_tree_per_shape_for_each_R():
    from pipeline.bench.trees_live import ROWS, row_specs

    rows = row_specs(ahead=(2, 3), ahead_lengths=(4,), trees=False, ahead_trees=("3x3",))
    assert rows == [("chain fixed:8", "fixed:8", "off", 1), ("chain auto", "auto", "off", 1),
                    ("chain fixed:4 ahead 2", "fixed:4", "off", 2), ("chain fixed:4 ahead 3", "fixed:4", "off", 3),
                    ("tree 3x3 ahead 2", "fixed:8", "3x3", 2), ("tree 3x3 ahead 3", "fixed:8", "3x3", 3)]
    assert [r[3] for r in row_specs()] == [1] * len(ROWS)  # without --ahead: today's rows, one round per trip
