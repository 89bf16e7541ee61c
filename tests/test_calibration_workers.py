"""`edge --calibrate-rounds` over a real nats-server: the edge times every length before its policies
learn from served rounds, locally or through the controller, and analysis sees only served rounds."""
from __future__ import annotations

import asyncio

import pytest

from pipeline.analysis import load_run
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest
from tests.pipeline_fixtures import cluster, read_log, reset_jetstream, start_controller, wait_for


def _done(path) -> list[dict]:
    return [e for e in read_log(path) if e.get("event") == "calibration_done"]


async def test_an_edge_times_every_length_at_start_up_and_its_auto_learns_only_their_compute(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, calibrate_rounds=1) as (client, edge, _):
        await wait_for(lambda: _done(tmp_path / "edge-1.jsonl"), timeout=60)
        auto = edge.policies.get("auto")
        assert auto.compute_known() and auto.n_obs == 0 and auto.at_risk.sum() == 0  # compute only
        res = await generate_stream(client, GenerateRequest("served", prompt="The for statement", max_new_tokens=12), 30)
        assert res.ok
    (done,) = _done(tmp_path / "edge-1.jsonl")
    assert done["complete"] and min(done["rounds_per_length"]) >= 1 and done["learned_by"] == "edge"
    assert all(ms is not None and ms > 0 for ms in done["compute_ms"])
    assert auto.at_risk.sum() > 0 and edge.completed == 1  # the served request's rounds; it alone completed
    log = read_log(tmp_path / "edge-1.jsonl")
    cal = [e for e in log if e.get("event") == "calibration_round"]
    assert cal and all(e["calibration"] and e["request_id"].startswith("calibration-edge-1-") for e in cal)
    assert {e["draft_length"] for e in cal} == set(range(1, 9))
    # the sweep ends the request once every length is timed, not at its token budget
    assert len(cal) <= 1 + max(done["rounds_per_length"]) * 8
    assert not [e for e in log if e.get("event") == "request_done" and e["request_id"].startswith("calibration-")]
    rounds = load_run(tmp_path).rounds  # analysis reads served rounds only
    assert set(rounds["request_id"]) == {"served"}


async def test_without_the_option_an_edge_sends_no_calibration_round(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, _):
        assert (await generate_stream(client, GenerateRequest("served", prompt="The for statement", max_new_tokens=8), 30)).ok
    log = read_log(tmp_path / "edge-1.jsonl")
    assert not [e for e in log if e.get("event", "").startswith("calibration")]
    assert all(e.get("calibration") is None for e in log if e.get("event") == "round")


async def test_the_controller_gives_an_edges_calibration_rounds_to_its_learner_as_compute_only(broker, pair, tmp_path):
    await reset_jetstream(broker.url)
    nc, ctl = await start_controller(broker.url, tmp_path)
    try:
        async with cluster(broker.url, pair, tmp_path, local_policy=False, calibrate_rounds=1) as (client, edge, _):
            await wait_for(lambda: _done(tmp_path / "edge-1.jsonl"), timeout=60)
            await wait_for(lambda: ("edge-1", "auto") in ctl.learners
                           and ctl.learners[("edge-1", "auto")].policy.compute_known(), timeout=30)
            learner = ctl.learners[("edge-1", "auto")]
            # published to the edge: a batch holding only some lengths' rounds publishes a version before
            # the one that knows every length's compute, so wait for that one, not for the first version
            await wait_for(lambda: edge.policies.versions.get("auto", 0) >= 1
                           and edge.policies.get("auto").compute_known(), timeout=30)
    finally:
        await ctl.stop()
        await nc.close()
    assert learner.policy.at_risk.sum() == 0 and learner.policy.n_obs == 0  # no acceptance, no played round
    (done,) = _done(tmp_path / "edge-1.jsonl")
    assert done["learned_by"] == "controller" and edge.policies.calibration == []


@pytest.mark.parametrize("flags, fragment", [
    (["--calibrate-rounds", "21"], "--calibrate-rounds must be in 0..20"),
    (["--calibrate-rounds", "2", "--ahead", "2"], "--calibrate-rounds times chain rounds"),
])
def test_a_bad_calibration_flag_is_refused_in_one_line_before_any_model_loads(flags, fragment):
    from tests.conftest import run_cli

    r = run_cli("edge", "--nats", "nats://127.0.0.1:1", *flags, timeout=120)
    assert r.returncode != 0 and fragment in r.stderr and r.stderr.strip().count("\n") == 0


async def test_an_edge_stopped_during_its_calibration_stops_it_at_once(broker, pair, tmp_path):
    import time

    # 10 rounds of every length over a 100 ms link take ~16 s: a stop that waited would wait them out
    async with cluster(broker.url, pair, tmp_path, channel="const:100", calibrate_rounds=10,
                       drain_timeout_s=30.0) as (client, edge, _):
        await wait_for(lambda: any(e.get("event") == "calibration_round" for e in read_log(tmp_path / "edge-1.jsonl")),
                       timeout=60)
        t0 = time.monotonic()
        await edge.stop()
        took = time.monotonic() - t0
    (done,) = _done(tmp_path / "edge-1.jsonl")
    assert not done["complete"] and took < 10.0  # not the drain a client's request may take
    assert not [e for e in read_log(tmp_path / "edge-1.jsonl") if e.get("event") == "request_failed"]


async def test_a_calibration_waits_for_a_verifier_that_starts_after_the_edge(broker, pair, tmp_path):
    from tests.pipeline_fixtures import start_cloud

    async with cluster(broker.url, pair, tmp_path, clouds=0, calibrate_rounds=1, failover_deadline_s=1.0,
                       request_timeout_s=1.0) as (client, edge, _):
        await asyncio.sleep(1.5)  # longer than a round would wait for a verifier
        assert not _done(tmp_path / "edge-1.jsonl")
        nc, cloud = await start_cloud(broker.url, pair, tmp_path)
        try:
            await wait_for(lambda: _done(tmp_path / "edge-1.jsonl"), timeout=60)
        finally:
            await cloud.stop()
            await nc.close()
    (done,) = _done(tmp_path / "edge-1.jsonl")
    assert done["complete"] and done["requests"] == 1
    assert not [e for e in read_log(tmp_path / "edge-1.jsonl") if "failed" in e.get("event", "")]


async def test_a_workload_summary_counts_its_own_rounds_not_the_edges_calibration(broker, pair, tmp_path):
    from pipeline.orchestration.workload import run_workload

    log = tmp_path / "edge-1.jsonl"
    async with cluster(broker.url, pair, tmp_path, channel="const:20", calibrate_rounds=5) as (client, edge, _):
        await wait_for(lambda: any(e.get("event") == "calibration_round" for e in read_log(log)), timeout=60)
        res = await run_workload(client, ["The for statement", "A list is"], 12, 2, "auto", timeout_s=60)
        await wait_for(lambda: _done(log), timeout=120)
    ours = {e["request_id"] for e in read_log(log) if e.get("event") == "round"}
    assert {ev.request_id for ev in res.timing_events} == ours and len(ours) == 2
    assert not any(ev.calibration for ev in res.timing_events)
