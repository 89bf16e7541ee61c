"""Failures noticed in seconds, over a real nats-server with real workers (issue 21, items 4-5):
an edge killed with kill -9 is noticed by its clients (`edge_gone`) and by the verifier that held
its sessions (freed, not kept for the TTL); a verifier stopped with SIGSTOP costs no request more
than about one request timeout while another verifier is healthy, and outputs stay exact.
Bounds are generous (a loaded machine is slow, never wrong); the exact numbers come from
`python -m pipeline.bench.liveness`."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from nodes.speculative import target_only_generate
from pipeline.orchestration.local import RunConfig, start_node
from pipeline.orchestration.workload import workload_prompts
from pipeline.transport import bus
from pipeline.transport.client import EDGE_GONE, generate_stream
from schemas.messages import GenerateRequest
from tests.pipeline_fixtures import cluster, read_log, start_cloud, wait_for

pytestmark = pytest.mark.slow


async def test_a_killed_edge_is_noticed_by_its_clients_and_its_verifier_in_seconds(broker, pair, tmp_path):
    cfg = RunConfig(channel="const:300", policy="fixed:4", local_policy=True, max_length=8)
    edge = await asyncio.to_thread(start_node, "edge", "edge-doomed", broker.url, tmp_path, cfg)
    cnc, cloud = await start_cloud(broker.url, pair, tmp_path, "cloud-live")
    client = await bus.connect(broker.url, "client", long_lived=False)
    try:
        started: set[str] = set()
        reqs = [GenerateRequest(f"doomed-{i}", prompt=p, max_new_tokens=2000, policy="fixed:4")
                for i, p in enumerate(workload_prompts(4))]
        tasks = [asyncio.create_task(generate_stream(client, r, timeout_s=60.0,
                                                     on_chunk=lambda res: started.add(res.request_id)))
                 for r in reqs]
        await wait_for(lambda: len(started) == len(reqs) and sum(k[0] == "edge-doomed" for k in cloud.sessions) == 4
                       and "edge-doomed" in cloud.edges.peers, timeout=60.0)  # an edge never heard keeps the TTL
        os.kill(edge.pid, signal.SIGKILL)
        killed = time.monotonic()
        results = await asyncio.gather(*tasks)
        noticed_s = time.monotonic() - killed
        assert [r.error_code for r in results] == [EDGE_GONE] * 4, [r.error for r in results]
        assert noticed_s < 30.0  # the silence timeout is 60 s; expected ~4 s
        assert "stopped answering" in results[0].error
        await wait_for(lambda: not any(k[0] == "edge-doomed" for k in cloud.sessions), timeout=15.0)
        ends = [e for e in read_log(tmp_path / "cloud-live.jsonl")
                if e["event"] == "session_end" and e.get("reason") == "edge_gone"]
        assert {e["request_id"] for e in ends} == {r.request_id for r in reqs}
    finally:
        edge.stop()
        await cloud.stop()
        await cnc.close()
        await client.close()


async def test_a_stalled_verifier_costs_no_request_more_than_a_timeout_while_another_is_healthy(broker, pair,
                                                                                               tmp_path):
    timeout_s = 10.0
    cfg = RunConfig(max_length=8)
    stalled = await asyncio.to_thread(start_node, "cloud", "cloud-stalled", broker.url, tmp_path, cfg)
    prompts = workload_prompts(8)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 64).token_ids
            for p in prompts]
    stopped_at = None
    try:
        async with cluster(broker.url, pair, tmp_path, channel="const:50", policy="fixed:4",
                           request_timeout_s=timeout_s, failover_deadline_s=60.0) as (client, edge, clouds):
            await wait_for(lambda: {"cloud-1", "cloud-stalled"} <= set(edge.verifiers.alive(time.monotonic())),
                           timeout=20.0)

            async def one(i: int, tag: str):
                req = GenerateRequest(f"{tag}-{i}", prompt=prompts[i], max_new_tokens=64, policy="fixed:4")
                return i, await generate_stream(client, req, timeout_s=90.0)

            first = [asyncio.create_task(one(i, "before")) for i in range(8)]
            await wait_for(lambda: any(lv.request is not None and lv.request.verifier == "cloud-stalled"
                                       and lv.request.round > 0 for lv in edge.live.values()), timeout=30.0)
            os.kill(stalled.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            await asyncio.sleep(0.5)  # the stall is under way (its length is the condition under test)
            second = [asyncio.create_task(one(i, "during")) for i in range(8)]  # new sessions during the stall
            done = await asyncio.wait_for(asyncio.gather(*first, *second), timeout=90.0)
            os.kill(stalled.pid, signal.SIGCONT)
            stopped_at = None
        for i, res in done:
            assert res.ok, res.error
            assert res.token_ids == refs[i], res.request_id
        worst = max(_longest_wait(res) for _, res in done)
        assert worst < timeout_s + 1.0 + 5.0, worst  # issue 21's bound plus slack for load (measured: ~4 s)
    finally:
        if stopped_at is not None:
            os.kill(stalled.pid, signal.SIGCONT)
        stalled.stop()


def _longest_wait(res) -> float:
    """The longest time a stream waited for its next chunk (from its request being sent)."""
    times = [res.sent_at, *sorted(res.chunk_mono)]
    return max(b - a for a, b in zip(times, times[1:]))


async def test_a_forged_or_garbled_heartbeat_is_refused_and_logged_and_the_workers_keep_serving(broker, pair, tmp_path):
    from schemas import subjects
    from schemas.codec import encode
    from schemas.messages import AliveMsg

    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        await client.publish(subjects.edge_alive("edge-x"), encode(AliveMsg("edge", "edge-y", 1)))  # body != subject
        await client.publish(subjects.edge_alive("edge-z"), encode(AliveMsg("verifier", "edge-z", 1)))  # wrong role
        await client.publish(subjects.verifier_alive("cloud-9"), b"\x93garbage")
        await wait_for(lambda: sum(e["event"] == "bad_message" for e in read_log(tmp_path / "cloud-1.jsonl")) >= 2
                       and any(e["event"] == "bad_message" for e in read_log(tmp_path / "edge-1.jsonl")))
        assert not {"edge-x", "edge-y", "edge-z"} & set(clouds[0].edges.peers)
        assert "cloud-9" not in edge.verifiers.peers
        res = await generate_stream(client, GenerateRequest("after-forgery", prompt="The with", max_new_tokens=8))
        assert res.ok, res.error
