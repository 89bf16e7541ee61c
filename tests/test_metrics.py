"""Prometheus /metrics of every worker, scraped over HTTP and parsed with prometheus_client's parser,
against the round logs of the same run (edge, verifier, controller and gateway on a real nats-server)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from control import make_policy
from pipeline.transport.confirm import confirm_sent
from nodes.cloud import CloudConfig, CloudWorker
from nodes.controller import Controller
from nodes.edge import EdgeConfig, EdgeWorker
from nodes.link import parse_channel
from nodes.policy_book import PolicyBook
from pipeline import logs
from pipeline.http.gateway import GatewayConfig
from pipeline.http.serve import start_gateway
from pipeline.metrics import CloudMetrics, ControlMetrics, EdgeMetrics, serve, tap
from pipeline.transport import bus
from pipeline.transport.client import generate_stream
from schemas.codec import Limits
from schemas.messages import GenerateRequest
from tests.pipeline_fixtures import read_log, reset_jetstream, wait_for

PROMPT = "The try statement specifies exception handlers"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(ss: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in ss.items() if n == name and want <= set(ls))




async def test_metrics_of_every_worker_match_the_round_logs(broker, pair, tmp_path):
    await reset_jetstream(broker.url)
    limits = Limits(max_draft_length=8, vocab_size=pair.vocab_size)
    conns, servers = [], []

    async def conn(name, log):
        nc = await bus.connect(broker.url, name, log)
        conns.append(nc)
        return nc

    cm = CloudMetrics("cloud-1")
    clog = tap(logs.configure("cloud-1", tmp_path / "cloud-1.jsonl"), cm)
    cloud = CloudWorker(await conn("cloud-1", clog), pair.target, pair.vocab_size, CloudConfig("cloud-1"), limits, clog)
    em = EdgeMetrics("edge-1")
    elog = tap(logs.configure("edge-1", tmp_path / "edge-1.jsonl"), em)
    edge = EdgeWorker(await conn("edge-1", elog), pair, EdgeConfig(edge_id="edge-1", default_policy="auto", max_length=8, request_timeout_s=5.0), limits,
                      elog, parse_channel("markov:1,4:0.7", seed=1),
                      PolicyBook(8, 0, learn_locally=False, fallback=make_policy("fixed:2", max_length=8)))
    km = ControlMetrics("control-1")
    klog = tap(logs.configure("control-1", tmp_path / "control-1.jsonl"), km)
    ctl = Controller(await conn("control-1", klog), klog, max_length=8, limits=Limits(max_draft_length=8))
    glog = logs.configure("gateway-1", tmp_path / "gateway-1.jsonl")
    gw, gm, http = await start_gateway(await conn("gateway-1", glog), GatewayConfig(), pair.tokenizer, glog)
    for w, m in ((cloud, cm), (edge, em), (ctl, km)):
        await w.start()
        m.bind(w)
        servers.append(serve(m.registry, "127.0.0.1:0"))
    for nc in conns:
        await confirm_sent(nc, 10.0)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http.port}/v1", api_key="-", max_retries=0)
    try:
        calls = [client.completions.create(model="specstop", prompt=PROMPT, max_tokens=40 + 8 * i, temperature=0,
                                           extra_body={"specstop": {"policy": p}})
                 for i, p in enumerate(["auto", "auto", "fixed:3", "target-only", "auto"])]
        calls.append(client.chat.completions.create(model="specstop", max_tokens=30, temperature=0.8, seed=3,
                                                    messages=[{"role": "user", "content": PROMPT}]))
        await asyncio.gather(*calls)
        refused = await generate_stream(conns[-1], GenerateRequest("bad-policy", prompt=PROMPT, policy="fixed:2000"), 10)
        assert refused.error_code == "bad_message"
        rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round"]
        auto_rounds = sum(1 for r in rounds if r["policy"] == "auto")
        def control_done() -> bool:  # its log line comes after the batch is stored, published and acked
            done = [e for e in read_log(tmp_path / "control-1.jsonl") if e["event"] == "updates_published"]
            return bool(done) and done[-1]["applied_total"] >= auto_rounds

        await wait_for(lambda: control_done() and not cloud.sessions, timeout=30.0)
        async with httpx.AsyncClient(timeout=10) as h:
            scraped = [samples((await h.get(s.url)).text) for s in servers]
            gw_text = (await h.get(f"http://127.0.0.1:{http.port}/metrics")).text
        cs, es, ks = scraped
        gs = samples(gw_text)
    finally:
        await client.close()
        await http.stop()
        await gw.stop()
        await edge.stop()
        await cloud.stop()
        await ctl.stop()
        for s in servers:
            s.close()
        for nc in conns:
            await nc.close()

    # edge: one `round` line = one round; tokens, positions and times are the lines' own numbers
    rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round"]
    assert len(rounds) > 20
    assert total(es, "specstop_edge_rounds_total") == len(rounds)
    for policy in {r["policy"] for r in rounds}:
        mine = [r for r in rounds if r["policy"] == policy]
        assert total(es, "specstop_edge_rounds_total", policy=policy) == len(mine)
        assert total(es, "specstop_edge_drafted_tokens_total", policy=policy) == sum(r["draft_length"] for r in mine)
        assert total(es, "specstop_edge_accepted_tokens_total", policy=policy) == sum(r["accepted"] for r in mine)
        assert total(es, "specstop_edge_policy_version", policy=policy) == mine[-1]["policy_version"]
    assert {r["policy"] for r in rounds} == {"auto", "fixed:3", "target-only"}
    assert total(es, "specstop_edge_emitted_tokens_total") == sum(r["tokens"] for r in rounds)
    for i in range(1, 9):
        assert total(es, "specstop_edge_position_drafted_total", position=str(i)) == \
            sum(1 for r in rounds if r["draft_length"] >= i)
        assert total(es, "specstop_edge_position_accepted_total", position=str(i)) == \
            sum(1 for r in rounds if r["accepted"] >= i)
    assert total(es, "specstop_edge_round_seconds_count") == len(rounds)
    assert abs(total(es, "specstop_edge_round_seconds_sum") - sum(r["round_ms"] for r in rounds) / 1e3) < 1e-3
    assert abs(total(es, "specstop_edge_network_seconds_sum") - sum(r["network_ms"] for r in rounds) / 1e3) < 1e-3
    assert total(es, "specstop_edge_draft_length") == rounds[-1]["draft_length"]
    assert total(es, "specstop_edge_channel_state", state=str(rounds[-1]["channel_state"])) == 1.0
    assert total(es, "specstop_edge_channel_state") == 1.0  # one state is current
    for state in {str(r["channel_state"]) for r in rounds}:
        last = [r for r in rounds if str(r["channel_state"]) == state][-1]
        assert total(es, "specstop_edge_draft_length_by_state", state=state) == last["draft_length"]
    edge_log = read_log(tmp_path / "edge-1.jsonl")
    done = Counter(e["finish_reason"] for e in edge_log if e["event"] == "request_done")
    for reason, n in done.items():
        assert total(es, "specstop_edge_requests_total", outcome=reason) == n
    assert total(es, "specstop_edge_errors_total", code="bad_message") == \
        sum(1 for e in edge_log if e.get("code") == "bad_message") == 1
    assert total(es, "specstop_edge_requests_in_flight") == 0

    # verifier: one `verify` line = one verified round
    verifies = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify"]
    assert total(cs, "specstop_cloud_verifies_total") == len(verifies) == len(rounds)
    assert total(cs, "specstop_cloud_drafted_tokens_total") == sum(v["draft_length"] for v in verifies)
    assert total(cs, "specstop_cloud_accepted_tokens_total") == sum(v["accepted"] for v in verifies) == \
        sum(r["accepted"] for r in rounds)
    assert total(cs, "specstop_cloud_verify_seconds_count") == len(verifies)
    assert total(cs, "specstop_cloud_batch_size_count") == len(verifies)
    assert total(cs, "specstop_cloud_sessions") == 0
    ends = Counter(e["reason"] for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "session_end")
    assert total(cs, "specstop_cloud_sessions_ended_total", reason="final") == ends["final"] > 0

    # controller: what it applied and the versions it published
    published = [e for e in read_log(tmp_path / "control-1.jsonl") if e["event"] == "updates_published"]
    assert total(ks, "specstop_control_events_applied_total") == published[-1]["applied_total"] == auto_rounds
    assert total(ks, "specstop_control_policy_version", edge="edge-1", policy="auto") == \
        published[-1]["versions"]["edge-1/auto"]
    assert total(ks, "specstop_control_updates_batches_total") == len(published)

    # gateway: one `http_request` line per request
    reqs = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_request"]
    assert len(reqs) == 6 and all(r["status"] == 200 for r in reqs)
    assert total(gs, "specstop_gateway_requests_total", status="200") == 6
    assert total(gs, "specstop_gateway_completion_tokens_total") == sum(r["completion_tokens"] for r in reqs)
    assert total(gs, "specstop_gateway_rounds_total") == sum(r["rounds"] for r in reqs) == len(rounds)
    assert total(gs, "specstop_gateway_requests_in_flight") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_started_with_the_metrics_flag_serves_them(broker, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "control", "--nats", broker.url, "--metrics",
                             f"127.0.0.1:{port}", "--id", "control-metrics", "--log-file",
                             str(tmp_path / "control.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ})
    try:
        text = None
        for _ in range(150):  # the port listens at once; the state gauges appear once the worker started
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                if "specstop_control_learners" in text:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert text is not None, proc.communicate(timeout=5)
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"specstop_control_events_applied", "specstop_control_learners",
                "specstop_control_errors"} <= names
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0


def test_a_busy_metrics_port_fails_in_one_line_before_the_model_loads(broker):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "edge", "--nats", broker.url, "--metrics",
                              f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and time.monotonic() - t0 < 15
    assert res.stderr.strip().splitlines()[-1].startswith(f"specstop: error: --metrics 127.0.0.1:{port}: cannot listen")
    assert "loading" not in res.stdout
