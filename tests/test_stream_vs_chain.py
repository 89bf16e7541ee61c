"""`bench trees --live` with the stream tree under device emulation: its references, the modelled cloud
streaming, the checks against the goal and the refusals (pipeline/bench/stream_vs_chain.py), and the flags."""
from __future__ import annotations

import subprocess
import sys

from pipeline.bench.stream_vs_chain import cloud_streaming_ms, refusals, stream_overrun_share, stream_summary
from pipeline.bench.trees_live import ROWS, row_specs
from pipeline.orchestration.local import RunConfig, devices_of

EMULATED = devices_of(RunConfig(edge_device="jetson-orin-nano", cloud_device="rtx-3090-ti"))


def _row(label: str, policy: str, tree: str, ms: float, **extra) -> dict:
    return {"row": label, "policy": policy, "tree": tree, "ahead": 1, "ms_per_token_median": ms, **extra}


ROWS_50 = [_row("chain fixed:2", "fixed:2", "off", 150.0), _row("chain fixed:8", "fixed:8", "off", 200.0),
           _row("chain auto", "auto", "off", 160.0), _row("stream tree w2", "auto", "stream:2", 90.0),
           _row("stream tree w3", "auto", "stream:3", 95.0), _row("stream tree auto w2", "auto", "stream:2:auto", 80.0)]


def test_chain_lengths_add_a_fixed_chain_row_each_before_todays_rows_without_repeating_fixed_8():
    rows = row_specs(trees=False, chain_lengths=(2, 8, 3))
    assert [r[0] for r in rows] == ["chain fixed:2", "chain fixed:3", "chain fixed:8", "chain auto"]
    assert all(r[2] == "off" and r[3] == 1 for r in rows)
    assert row_specs() == [(label, policy, tree, 1) for label, policy, tree in ROWS]  # without: today's rows


def test_the_stream_tree_is_measured_against_the_best_fixed_chain_in_hindsight_and_chain_auto():
    out = stream_summary(ROWS_50, 50.0, EMULATED)
    assert out["best_stream_tree"] == "stream tree w2"  # stream auto is not a fixed stream row
    assert out["best_fixed_chain"] == "chain fixed:2"
    by_ref = {c["reference"]: c for c in out["stream_checks"]}
    assert by_ref["best_fixed_chain"] | {"ratio": 1.667, "goal": 1.5, "met": True} == by_ref["best_fixed_chain"]
    assert by_ref["best_fixed_chain"]["reference_row"] == "chain fixed:2"
    assert by_ref["chain_auto"]["ratio"] == 1.778 and by_ref["chain_auto"]["met"]


def test_a_fill_row_is_checked_apart_and_never_counted_as_the_best_speculation():
    rows = [*ROWS_50, _row("stream tree w3 fill", "auto", "stream:3:fill", 64.0, filled_per_token=1.0)]
    out = stream_summary(rows, 50.0, EMULATED)
    assert out["best_stream_tree"] == "stream tree w2"  # faster, but the cloud generating on its own
    assert out["best_stream_tree_fill"] == "stream tree w3 fill"
    by_ref = {c["reference"]: c for c in out["stream_fill_checks"]}
    assert by_ref["chain_auto"]["ratio"] == 2.5 and by_ref["best_fixed_chain"]["reference_row"] == "chain fixed:2"
    assert out["best_stream_tree_fill_filled_per_token"] == 1.0
    assert out["best_stream_tree_fill_vs_cloud_streaming"] == round(64.0 / 63.0, 3)


def test_a_stream_tree_short_of_the_goal_is_reported_as_missed_not_dropped():
    rows = [_row("chain fixed:2", "fixed:2", "off", 120.0), _row("stream tree w2", "auto", "stream:2", 100.0)]
    (check,) = stream_summary(rows, 50.0, EMULATED)["stream_checks"]
    assert check["ratio"] == 1.2 and not check["met"]


def test_at_zero_delay_the_goal_is_never_worse_than_today():
    rows = [_row("chain fixed:2", "fixed:2", "off", 80.0), _row("stream tree w2", "auto", "stream:2", 90.0)]
    (check,) = stream_summary(rows, 0.0, EMULATED)["stream_checks"]
    assert check["goal"] == 1.0 and check["ratio"] == 0.889 and not check["met"]


def test_the_cloud_streaming_is_one_single_position_forward_of_the_emulated_cloud_per_token():
    assert cloud_streaming_ms(EMULATED) == 63.0  # rtx-3090-ti: 60 ms + 3 ms per position
    out = stream_summary(ROWS_50, 50.0, EMULATED)
    assert out["best_stream_tree_vs_cloud_streaming"] == round(90.0 / 63.0, 3)
    assert out["best_fixed_chain_vs_cloud_streaming"] == round(150.0 / 63.0, 3)


def test_without_an_emulated_cloud_there_is_no_modelled_streaming_ratio():
    out = stream_summary(ROWS_50, 50.0, None)
    assert out["cloud_streaming_ms_per_token_modelled"] is None and "best_stream_tree_vs_cloud_streaming" not in out


def test_without_a_stream_row_or_a_fixed_chain_there_is_nothing_to_compare():
    assert stream_summary(ROWS_50[:3], 50.0, EMULATED) == {}
    assert stream_summary(ROWS_50[2:], 50.0, EMULATED) == {}


def test_the_overrun_share_counts_both_sides_forwards():
    done = [{"draft_overruns": 1, "draft_forwards": 50}, {"draft_overruns": 0, "draft_forwards": 30}]
    ends = [{"verify_overruns": 3, "verify_forwards": 20}]
    assert stream_overrun_share(done, ends) == 0.04
    assert stream_overrun_share([], []) is None


def test_rows_with_different_tokens_or_outrun_devices_are_refused_in_one_line_each():
    rows = [_row("stream tree w2", "auto", "stream:2", 90.0, emulation_overrun_share=0.2),
            _row("stream tree w3", "auto", "stream:3", 95.0, emulation_overrun_share=0.01),
            _row("chain fixed:2", "fixed:2", "off", 150.0, emulation_refusal="9.0 % of rounds computed slower")]
    got = refusals(rows, same_output=False)
    assert [r["check"] for r in got] == ["different_output", "machine_load", "machine_load"]
    assert "stream tree w2: 20.0 %" in got[1]["why"] and got[2]["why"].startswith("chain fixed:2: ")
    assert all("\n" not in r["why"] for r in got)
    assert refusals(rows[1:2], same_output=True) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "trees", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_emulation_flags_without_live_are_refused_in_one_line():
    r = _cli("--edge-device", "jetson-orin-nano")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--edge-device, --cloud-device, --chain-lengths and --stream-width-auto need --live" in r.stderr


def test_a_device_without_the_half_it_emulates_is_refused_before_any_run():
    r = _cli("--live", "--edge-device", "rtx-3090-ti")
    assert r.returncode == 2 and "has no draft times" in r.stderr and r.stderr.strip().count("\n") == 0


def test_a_chain_length_below_one_is_refused():
    r = _cli("--live", "--chain-lengths", "2,0")
    assert r.returncode == 2 and "--chain-lengths" in r.stderr


def test_a_stream_row_without_verdicts_or_rounds_is_refused_in_one_line():
    import pytest

    from pipeline.bench.trees_live import _stream_row
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="logged no verdict and no round") as exc:
        _stream_row([], [], [])
    assert "\n" not in str(exc.value)
