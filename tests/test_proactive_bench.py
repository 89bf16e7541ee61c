"""The proactive row of `specstop bench pipeline` reports each shape next to the best chain and
cloud streaming (a short run at 0 ms: the plumbing, not the speed)."""
from pipeline.bench.proactive import SHAPES, bench_proactive


def test_the_row_names_the_best_chain_the_models_pick_and_the_ratios():
    res = bench_proactive(delays_ms=(0.0,), max_new_tokens=6, repeats=1)
    row = res["delay_0ms"]
    assert set(row["rows"]) >= {s[0] for s in SHAPES[0.0]}
    assert row["best_chain"]["shape"].startswith("chain")
    assert row["model_choice"]["shape"] in row["rows"]
    assert "stream tree w2" in row["rows"] and row["stream_tree_choice"]["shape"] in row["rows"]
    assert row["best_overall"]["speedup_vs_best_chain"] > 0
    assert "fill" not in row["best_overall"]["shape"]  # the cloud alone is not a speculation shape
    assert row["stream_tree_fill"]["shape"] in row["rows"]
    assert row["cloud_streaming_ms_per_token_modelled"] == row["target_step_ms"]  # no delay to amortise
