"""`experiment compare --stream W,...`: the stream tree's rows beside the chains (pipeline/experiments/stream.py):
timed by its verdicts, against the best fixed chain in hindsight, auto and the modelled cloud streaming."""
from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from pipeline.experiments.report import _stream_table
from pipeline.experiments.stream import missing_stream_cells, stream_checks, stream_edges, stream_flags, stream_frame, stream_rows
from pipeline.orchestration.local import RunConfig, devices_of

EMULATED = devices_of(RunConfig(edge_device="jetson-orin-nano", cloud_device="rtx-3090-ti"))
EDGE = "edge-d50-stream-w2"


def _verdict(request_id: str, gap_ms: float, tokens: int, miss: bool = False, delay: float = 50.0) -> dict:
    return {"event": "stream_verdict", "request_id": request_id, "gap_ms": gap_ms, "tokens": tokens,
            "one_way_ms": delay, "miss": miss}


def _chain_rounds(policy: str, ms_per_token: float, prompts: int = 4, delay: float = 50.0) -> list[dict]:
    return [{"request_id": f"{policy.replace(':', '-')}-edge-d50-{k}", "policy": policy, "round_ms": ms_per_token * 4,
             "tokens": 4, "delay_ms": delay} for k in range(prompts) for _ in range(3)]


def _stream_events(ms_per_token: float, prompts: int = 4) -> dict[str, list[dict]]:
    es = [_verdict(f"stream-w2-{EDGE}-{k}", ms_per_token * 2, 2, miss=(i == 0))
          for k in range(prompts) for i in range(6)]
    return {EDGE: es + [_verdict(f"warmup-{EDGE}-0", 1.0, 8), {"event": "stream_done", "request_id": "x"}]}


def test_each_width_runs_on_an_edge_of_its_own_per_delay_with_the_stream_tree_on():
    assert stream_edges([0, 50], [2, 3]) == {"edge-d0-stream-w2": (0.0, 2), "edge-d0-stream-w3": (0.0, 3),
                                             "edge-d50-stream-w2": (50.0, 2), "edge-d50-stream-w3": (50.0, 3)}
    assert stream_flags(3) == ["--stream-tree", "on", "--stream-width", "3"]


def test_the_frame_has_a_row_per_verdict_labelled_by_width_without_warm_up_requests():
    f = stream_frame(_stream_events(90.0), {EDGE: 2})
    assert f.height == 24 and set(f["policy"]) == {"stream:w2"}
    assert f["round_ms"].sum() / f["tokens"].sum() == pytest.approx(90.0) and set(f["delay_ms"]) == {50.0}
    assert stream_frame({EDGE: []}, {EDGE: 2}).is_empty()


def test_a_stream_row_is_measured_against_the_best_fixed_chain_in_hindsight_auto_and_the_cloud_streaming():
    chains = pl.DataFrame(_chain_rounds("fixed:1", 160.0) + _chain_rounds("fixed:2", 150.0)
                          + _chain_rounds("auto", 155.0))
    (row,) = stream_rows(chains, stream_frame(_stream_events(90.0), {EDGE: 2}), [1, 2], EMULATED)
    assert row["delay"] == "50.0" and row["policy"] == "stream:w2" and row["ms_per_token"] == 90.0
    assert row["best_fixed_chain"] == "fixed:2" and row["best_fixed_chain_over_this"] == round(150 / 90, 3)
    assert row["auto_over_this"] == round(155 / 90, 3)
    assert row["this_vs_cloud_streaming"] == round(90 / 63, 3) and row["misses_per_token"] == round(4 / 48, 4)
    assert row["vs_best_fixed_chain"]["pairs"] == 4 and row["vs_best_fixed_chain"]["gap_pct"] == -40.0


def test_the_checks_name_their_reference_and_report_a_missed_goal():
    chains = pl.DataFrame(_chain_rounds("fixed:2", 120.0) + _chain_rounds("auto", 200.0))
    rows = stream_rows(chains, stream_frame(_stream_events(100.0), {EDGE: 2}), [2], EMULATED)
    fixed, auto = stream_checks(rows)
    assert fixed | {"reference": "best_fixed_chain", "reference_policy": "fixed:2", "ratio": 1.2, "goal": 1.5,
                    "met": False} == fixed
    assert auto["reference_policy"] == "auto" and auto["ratio"] == 2.0 and auto["met"]
    page = "\n".join(_stream_table(rows, [fixed, auto]))
    assert "stream:w2" in page and "goal 1.5x: missed" in page and "goal 1.5x: met" in page


def test_a_stream_cell_without_verdicts_is_refused_not_reported_as_a_success():
    assert missing_stream_cells([], 2, (2, 3)) and missing_stream_cells([], 2, (2, 3))[0].check == "too_few_rounds"
    assert "1 of 4" in missing_stream_cells([{}] * 3, 2, (2, 3))[0].why
    assert missing_stream_cells([{}] * 4, 2, (2, 3)) == []
    assert missing_stream_cells([], 2, ()) == []  # not asked for: nothing missing


def test_no_stream_rows_without_the_stream_tree():
    assert stream_rows(pl.DataFrame(_chain_rounds("fixed:2", 120.0)), stream_frame({}, {}), [2], EMULATED) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "experiment", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("which, value, fragment", [
    ("compare", "0", "must list stream-tree widths in 1..8"),
    ("compare", "2,9", "must list stream-tree widths in 1..8"),
    ("compare", "two", "'two' in 'two' is not a width"),
    ("drift", "2", "only `experiment compare` runs the stream tree"),
])
def test_bad_stream_widths_are_refused_in_one_line(tmp_path, which, value, fragment):
    r = _cli(which, "--out", str(tmp_path / "out"), "--stream", value)
    assert r.returncode != 0 and fragment in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()  # refused before anything ran


AUTO_EDGE = "edge-d50-stream-wauto"
W8_EDGE = "edge-d50-stream-w8"


def _auto_events(ms_per_token: float, widths: list[int]) -> dict[str, list[dict]]:
    """An edge with the width learned per request: its verdicts and each request's `stream_done` width."""
    es = []
    for k, w in enumerate(widths):
        rid = f"stream-wauto-{AUTO_EDGE}-{k}"
        es += [_verdict(rid, ms_per_token * 2, 2) for _ in range(6)]
        es.append({"event": "stream_done", "request_id": rid, "width": w})
    return {AUTO_EDGE: es}


def _fixed_events(edge: str, width: int, ms_per_token: float, prompts: int = 4) -> dict[str, list[dict]]:
    return {edge: [_verdict(f"stream-w{width}-{edge}-{k}", ms_per_token * 2, 2) for k in range(prompts) for _ in range(6)]}


def test_the_learned_width_runs_on_an_edge_of_its_own_with_stream_width_auto():
    assert stream_edges([50], [2, "auto"]) == {"edge-d50-stream-w2": (50.0, 2), AUTO_EDGE: (50.0, "auto")}
    assert stream_flags("auto") == ["--stream-tree", "on", "--stream-width", "auto"]


def test_the_frame_carries_the_width_each_request_ran_at():
    f = stream_frame({**_auto_events(80.0, [2, 2, 4, 8]), **_fixed_events(W8_EDGE, 8, 70.0)},
                     {AUTO_EDGE: "auto", W8_EDGE: 8})
    auto = f.filter(pl.col("policy") == "stream:wauto")
    assert auto.group_by("request_id").agg(pl.col("width").first())["width"].sort().to_list() == [2, 2, 4, 8]
    assert set(f.filter(pl.col("policy") == "stream:w8")["width"]) == {8}


def test_the_learned_width_is_measured_against_the_best_fixed_width_in_hindsight():
    chains = pl.DataFrame(_chain_rounds("fixed:2", 150.0) + _chain_rounds("auto", 140.0))
    frame = stream_frame({**_auto_events(80.0, [2, 2, 4, 8]), **_fixed_events(EDGE, 2, 90.0),
                          **_fixed_events(W8_EDGE, 8, 76.0)}, {AUTO_EDGE: "auto", EDGE: 2, W8_EDGE: 8})
    rows = stream_rows(chains, frame, [2], EMULATED)
    (learned,) = [r for r in rows if r["policy"] == "stream:wauto"]
    assert learned["widths"] == {"2": 2, "4": 1, "8": 1}
    assert learned["best_fixed_width"] == "stream:w8" and learned["best_fixed_width_over_this"] == round(76 / 80, 3)
    assert learned["vs_best_fixed_width"]["pairs"] == 4 and learned["vs_best_fixed_width"]["gap_pct"] == pytest.approx(5.26, abs=0.01)
    assert all("best_fixed_width" not in r for r in rows if r["policy"] != "stream:wauto")
    checks = stream_checks(rows)
    (own,) = [c for c in checks if c["reference"] == "best_fixed_width"]
    assert own["stream"] == "stream:wauto" and own["reference_policy"] == "stream:w8" and own["goal"] == 0.952
    assert not own["met"]  # 5.3 % slower than w8: outside 5 %, reported as missed
    page = "\n".join(_stream_table(rows, checks))
    assert "ran widths 2 (2 requests), 4 (1 request), 8 (1 request)" in page
    assert "vs best fixed width (stream:w8): 0.95x, goal 0.952x: missed" in page


def test_the_learned_width_alone_has_no_fixed_width_to_be_measured_against():
    chains = pl.DataFrame(_chain_rounds("fixed:2", 150.0) + _chain_rounds("auto", 140.0))
    (row,) = stream_rows(chains, stream_frame(_auto_events(80.0, [2, 4]), {AUTO_EDGE: "auto"}), [2], EMULATED)
    assert row["best_fixed_width"] is None and "vs_best_fixed_width" not in row
    assert [c["reference"] for c in stream_checks([row])] == ["best_fixed_chain", "auto"]


def test_stream_widths_take_auto_beside_numbers_and_refuse_a_repeat():
    from pipeline.cli.runs import stream_widths
    from pipeline.errors import PipelineError

    assert stream_widths("2, auto,8", "compare") == (2, "auto", 8)
    with pytest.raises(PipelineError, match="lists a width twice"):
        stream_widths("auto,auto", "compare")
    assert stream_widths("Auto,4", "compare") == ("auto", 4)
    with pytest.raises(PipelineError, match="'automatic' in '2,automatic' is not a width"):
        stream_widths("2,automatic", "compare")
    with pytest.raises(PipelineError, match=r"must list stream-tree widths in 1\.\.8 \(or auto\)"):
        stream_widths("auto,9", "compare")


def test_the_learned_width_check_holds_to_five_percent_unrounded():
    chains = pl.DataFrame(_chain_rounds("auto", 140.0))
    for auto_ms, met in ((76.0 * 1.0499, True), (76.0 * 1.051, False)):
        frame = stream_frame({**_auto_events(auto_ms, [2, 4, 8, 8]), **_fixed_events(W8_EDGE, 8, 76.0)},
                             {AUTO_EDGE: "auto", W8_EDGE: 8})
        (own,) = [c for c in stream_checks(stream_rows(chains, frame, [], EMULATED)) if c["reference"] == "best_fixed_width"]
        assert own["met"] is met


def test_stream_rows_come_in_delay_order_and_binned_delays_do_not_break_the_checks():
    def at(delay: float, edge: str, width, ms: float) -> list[dict]:
        return [_verdict(f"stream-w{width}-{edge}-{k}", ms * 2, 2, delay=delay) for k in range(4) for _ in range(6)]

    events, widths = {}, {}
    for d in (150.0, 10.0, 50.0):
        events[f"edge-d{d:g}-stream-w2"] = at(d, "x", 2, 80.0 + d / 10)
        widths[f"edge-d{d:g}-stream-w2"] = 2
    chains = pl.DataFrame([r for d in (150.0, 10.0, 50.0) for r in _chain_rounds("auto", 140.0, delay=d)])
    rows = stream_rows(chains, stream_frame(events, widths), [], EMULATED)
    assert [r["delay"] for r in rows] == ["10.0", "50.0", "150.0"]
    # more than 12 distinct measured delays: quantile bins, whose labels are not numbers
    many = {f"e{i}": at(40.0 + i, f"e{i}", 2, 80.0) for i in range(14)}
    binned = stream_rows(pl.DataFrame(_chain_rounds("auto", 140.0)), stream_frame(many, {e: 2 for e in many}), [], EMULATED)
    assert binned and all(c["goal"] == 1.5 for c in stream_checks(binned))


def test_a_learned_width_request_without_stream_done_is_left_out_of_the_width_counts():
    frame = stream_frame({AUTO_EDGE: [_verdict(f"stream-wauto-{AUTO_EDGE}-0", 160.0, 2)]}, {AUTO_EDGE: "auto"})
    assert frame["width"].to_list() == [None]
    (row,) = stream_rows(pl.DataFrame(_chain_rounds("auto", 140.0)), frame, [], EMULATED)
    assert row["widths"] == {}
    assert "ran widths none recorded" in "\n".join(_stream_table([row], []))


FILL_EDGE = "edge-d50-stream-w8-fill"


def _fill_events(ms_per_token: float, prompts: int = 4) -> tuple[dict[str, list[dict]], list[dict]]:
    """A fill edge's verdicts, and the cloud's `session_end` per request (8 tokens: 7 filled, 9 forwards)."""
    rids = [f"stream-w8-fill-{FILL_EDGE}-{k}" for k in range(prompts)]
    events = {FILL_EDGE: [_verdict(rid, ms_per_token * 2, 2) for rid in rids for _ in range(4)]}
    ends = [{"event": "session_end", "request_id": rid, "stream_tree": True, "fills": 7, "verify_forwards": 9}
            for rid in rids]
    return events, ends


def test_a_fill_width_runs_on_an_edge_of_its_own_labelled_apart_from_speculation():
    from pipeline.experiments.stream import is_fill, stream_label

    assert stream_edges([50], [8], fill=True) == {FILL_EDGE: (50.0, 8)}
    assert stream_label(8, fill=True) == "stream:w8:fill" and is_fill("stream:w8:fill")
    assert stream_label(8) == "stream:w8" and not is_fill("stream:w8")


def test_the_lab_of_a_fill_row_runs_its_verifier_with_stream_fill(tmp_path):
    from pipeline.experiments.lab import Lab, LabConfig
    from pipeline.orchestration.local import node_args

    lab = Lab(LabConfig(tmp_path), "x", {FILL_EDGE: "const:50"}, cloud_flags=["--stream-fill"])
    assert node_args("cloud", "nats://127.0.0.1:1", lab.run_cfg)[-1] == "--stream-fill"
    plain = Lab(LabConfig(tmp_path), "y", {EDGE: "const:50"})
    assert "--stream-fill" not in node_args("cloud", "nats://127.0.0.1:1", plain.run_cfg)


def test_a_fill_row_carries_the_clouds_work_per_token_counted_once_per_request():
    events, ends = _fill_events(60.0)
    frame = stream_frame(events, {FILL_EDGE: 8}, fill=True, cloud_ends=ends)
    assert set(frame["policy"]) == {"stream:w8:fill"} and frame["filled"].sum() == 28
    chains = pl.DataFrame(_chain_rounds("fixed:2", 120.0) + _chain_rounds("auto", 110.0))
    (row,) = stream_rows(chains, frame, [2], EMULATED)
    assert row["fill"] and row["filled_per_token"] == round(7 / 8, 3) and row["target_forwards_per_token"] == round(9 / 8, 3)
    assert row["auto_over_this"] == round(110 / 60, 3)
    assert "0.875 tokens filled by the cloud and 1.125 target forwards per token" in "\n".join(_stream_table([row], []))


def test_a_faster_fill_row_is_checked_apart_and_is_never_the_learned_widths_oracle():
    events, ends = _fill_events(60.0)
    frame = pl.concat([stream_frame({**_auto_events(80.0, [8, 8, 8, 8]), **_fixed_events(W8_EDGE, 8, 76.0)},
                                    {AUTO_EDGE: "auto", W8_EDGE: 8}),
                       stream_frame(events, {FILL_EDGE: 8}, fill=True, cloud_ends=ends)], how="diagonal_relaxed")
    rows = stream_rows(pl.DataFrame(_chain_rounds("fixed:2", 120.0) + _chain_rounds("auto", 110.0)), frame, [2], EMULATED)
    (learned,) = [r for r in rows if r["policy"] == "stream:wauto"]
    assert learned["best_fixed_width"] == "stream:w8"  # not the faster fill row
    checks = stream_checks(rows)
    spec = [c for c in checks if c["reference"] == "auto" and not c["fill"]]
    fill = [c for c in checks if c["reference"] == "auto" and c["fill"]]
    assert [c["stream"] for c in spec] == ["stream:w8"] and not spec[0]["met"]  # 110 / 76 = 1.45x
    assert [c["stream"] for c in fill] == ["stream:w8:fill"] and fill[0]["met"]  # 110 / 60 = 1.83x
    assert "goal 1.5x: met (with fill)" in "\n".join(_stream_table(rows, checks))


def test_a_missing_fill_cell_is_refused_apart_from_the_speculation_cells():
    (r,) = missing_stream_cells([{"fill": False}] * 2, 2, (8,), (8,))
    assert r.check == "too_few_rounds" and r.why.startswith("stream tree with fill: 2 of 2")
    assert missing_stream_cells([{"fill": False}] * 2 + [{"fill": True}] * 2, 2, (8,), (8,)) == []


@pytest.mark.parametrize("which, value, fragment", [
    ("compare", "9", "--stream-fill: '9' must list stream-tree widths in 1..8"),
    ("drift", "8", "--stream-fill: only `experiment compare` runs the stream tree"),
])
def test_bad_fill_widths_are_refused_in_one_line(tmp_path, which, value, fragment):
    r = _cli(which, "--out", str(tmp_path / "out"), "--stream-fill", value)
    assert r.returncode != 0 and fragment in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
