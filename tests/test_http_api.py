"""The OpenAI-compatible gateway over real HTTP on loopback, with the official `openai` client, in front of a
real edge and verifier on a real nats-server."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest

from nodes.models.train_pair import corpus_documents
from nodes.speculative import target_only_generate
from pipeline import logs
from pipeline.http.gateway import GatewayConfig
from pipeline.http.requests import Message, render_chat
from pipeline.http.serve import start_gateway
from pipeline.transport import bus
from tests.pipeline_fixtures import cluster, read_log, wait_for

PROMPT = "The try statement specifies exception handlers"


@asynccontextmanager
async def gateway(url: str, pair, log_dir: Path, **cfg):
    log = logs.configure("gateway-1", log_dir / "gateway-1.jsonl")
    nc = await bus.connect(url, "gateway-1", log)
    gw, metrics, server = await start_gateway(nc, GatewayConfig(**cfg), pair.tokenizer, log)
    base = f"http://127.0.0.1:{server.port}"
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = httpx.AsyncClient(base_url=base, timeout=60)
    try:
        yield client, raw, gw
    finally:
        await client.close()
        await raw.aclose()
        await server.stop()
        await gw.stop()
        await nc.close()




def reference(pair, prompt: str, n: int) -> str:
    return target_only_generate(pair, pair.tokenizer.encode(prompt, add_special_tokens=False), n).text


async def test_streamed_equals_whole_equals_target_only_greedy(broker, pair, tmp_path):
    prompt = corpus_documents()[20][:200]
    ref = reference(pair, prompt, 64)
    messages = [{"role": "system", "content": "Python documentation."}, {"role": "user", "content": PROMPT}]
    chat_ref = reference(pair, render_chat([Message.model_validate(m) for m in messages]), 48)
    async with cluster(broker.url, pair, tmp_path, channel="const:2") as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        models = await client.models.list()
        assert [m.id for m in models.data] == ["specstop"]
        whole = await client.completions.create(model="specstop", prompt=prompt, max_tokens=64, temperature=0,
                                                extra_body={"specstop": {"policy": "fixed:4"}})
        pieces, finals, stats = [], [], None
        stream = await client.completions.create(model="specstop", prompt=prompt, max_tokens=64, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})
        usage = None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
                finals.append(chunk.choices[0].finish_reason)
            if chunk.usage is not None:
                usage, stats = chunk.usage, chunk.model_extra["specstop"]
        chat = await client.chat.completions.create(model="specstop", messages=messages, max_tokens=48, temperature=0)
        chat_pieces, roles = [], []
        async for chunk in await client.chat.completions.create(model="specstop", messages=messages, max_tokens=48,
                                                                temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                chat_pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].delta.role:
                roles.append(chunk.choices[0].delta.role)
        target_only = await client.completions.create(model="specstop", prompt=prompt, max_tokens=64, temperature=0,
                                                      extra_body={"specstop": {"policy": "target-only"}})
    assert whole.choices[0].text == ref == "".join(pieces) == target_only.choices[0].text
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 64 and whole.usage.prompt_tokens == len(pair.tokenizer.encode(prompt))
    ext = whole.model_extra["specstop"]
    assert ext["policy"] == "fixed:4" and ext["rounds"] == ext["rounds_reported"] > 1
    assert ext["drafted_tokens"] == 4 * ext["rounds"] and ext["accepted_tokens"] + ext["rounds"] >= 64
    assert ext["mean_draft_length"] == 4.0
    assert len([p for p in pieces if p]) > 1, "one SSE event per round, not one at the end"
    assert finals[-1] == "length" and usage.completion_tokens == 64 and stats["rounds"] > 1
    assert target_only.model_extra["specstop"]["drafted_tokens"] == 0
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == chat_ref == "".join(chat_pieces) and roles == ["assistant"]


async def test_stop_sequences_end_the_text_before_them_and_stop_the_generation(broker, pair, tmp_path):
    ref = reference(pair, PROMPT, 120)
    stop = ref[40:44]
    cut = ref[:ref.find(stop)]
    async with cluster(broker.url, pair, tmp_path) as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        whole = await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=120, temperature=0,
                                                stop=["\x00never", stop])
        streamed = []
        async for chunk in await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=120,
                                                           temperature=0, stop=stop, stream=True):
            streamed.append((chunk.choices[0].text, chunk.choices[0].finish_reason))
        await wait_for(lambda: not edge.live and not clouds[0].sessions)
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    assert "".join(t for t, _ in streamed) == cut and streamed[-1][1] == "stop"


async def test_no_verifier_is_a_503_and_no_edge_is_a_503(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, clouds=0, failover_deadline_s=1.0) as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        with pytest.raises(openai.APIStatusError) as no_verifier:
            await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=8, temperature=0)
        with pytest.raises(openai.APIStatusError) as streamed:
            await client.chat.completions.create(model="specstop", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=8, stream=True)
    async with gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        with pytest.raises(openai.APIStatusError) as no_edge:
            await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=8)
    for exc, code in ((no_verifier, "no_verifier"), (streamed, "no_verifier"), (no_edge, "no_edge")):
        assert exc.value.status_code == 503
        err = exc.value.response.json()["error"]
        assert err["code"] == code and err["type"] == "service_unavailable" and set(err) == {"message", "type",
                                                                                            "param", "code"}


async def test_a_client_that_disconnects_mid_stream_frees_the_verifier_session(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:10") as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        stream = await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=1500, temperature=0,
                                                 stream=True, extra_body={"specstop": {"policy": "fixed:2"}})
        got = 0
        async for chunk in stream:
            got += 1
            if got == 3:
                break
        assert clouds[0].sessions and edge.live
        await stream.close()
        await wait_for(lambda: not edge.live)
        await wait_for(lambda: not clouds[0].sessions)
        await wait_for(lambda: not gw.running)
    events = read_log(tmp_path / "edge-1.jsonl")
    assert any(e["event"] == "request_cancelled" for e in events)
    http = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_request"]
    assert http[-1]["code"] == "client_gone" and http[-1]["status"] == 499


@pytest.mark.parametrize("body, param, fragment", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"prompt": "x"}, "model", "Field required"),
    ({"model": "specstop", "prompt": "x", "max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"model": "specstop", "prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"model": "specstop", "prompt": "x", "max_tokens": 100000}, "max_tokens", "at most 2048"),
    ({"model": "specstop", "prompt": "x", "n": 2}, "n", "less than or equal to 1"),
    ({"model": "specstop", "prompt": "x", "temperature": 7}, "temperature", "less than or equal to 2"),
    ({"model": "specstop", "prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
    ({"model": "specstop", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"model": "specstop", "prompt": "x", "stop": [""]}, "stop[0]", "at least 1"),
    ({"model": "specstop", "prompt": "x", "bogus": 1}, "bogus", "Extra inputs"),
    ({"model": "specstop", "prompt": "x", "echo": True}, "echo", "not supported"),
    ({"model": "specstop", "prompt": "x", "logprobs": 3}, "logprobs", "less than or equal to 0"),
    ({"model": "specstop", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"model": "specstop", "prompt": ["a", "b"]}, "prompt", "at most 1"),
    ({"model": "specstop", "prompt": ""}, "prompt", "at least 1"),
    ({"model": "specstop", "prompt": "x" * 5000}, "prompt", "at most 4096"),
    ({"model": "specstop", "prompt": "x", "seed": 1 << 70}, "seed", "less than or equal"),
    ({"model": "specstop", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ({"model": "specstop", "prompt": "x", "specstop": {"policy": "fixed:2000"}}, "specstop.policy", "fixed:2000"),
    ({"model": "specstop", "prompt": "x", "specstop": {"policy": "nonsense"}}, "specstop.policy", "nonsense"),
    ({"model": "specstop", "prompt": "x", "specstop": {"deadline_s": -1}}, "specstop.deadline_s", "greater than 0"),
    ({"model": "specstop", "messages": []}, "messages", "at least 1"),
])
async def test_every_bad_body_is_an_openai_400_naming_the_field(broker, pair, tmp_path, body, param, fragment):
    endpoint = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    async with gateway(broker.url, pair, tmp_path, max_prompt_tokens=4096) as (client, raw, gw):
        r = await (raw.post(endpoint, content=body) if isinstance(body, bytes) else raw.post(endpoint, json=body))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
        assert err["param"] == param and fragment in err["message"], err
        assert (await raw.get("/v1/models")).status_code == 200  # still serving


async def test_chat_bodies_unknown_models_and_routes_are_refused_in_openai_shape(broker, pair, tmp_path):
    async with gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        cases = [
            ({"model": "specstop", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
            ({"model": "specstop", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
             "messages[0].content[0].type"),
            ({"model": "specstop", "messages": [{"role": "user", "content": "x"}], "tools": []}, 400, "tools"),
            ({"model": "specstop", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9999},
             400, "max_completion_tokens"),
            ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ]
        for body, status, param in cases:
            r = await raw.post("/v1/chat/completions", json=body)
            assert r.status_code == status and r.json()["error"]["param"] == param, r.text
        r = await raw.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await raw.get("/v1/completions")
        assert r.status_code == 405 and "error" in r.json()
        r = await raw.post("/v1/completions", content=b"x" * (5 << 20))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_overload_is_429_and_a_passed_deadline_is_504(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:10") as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path, max_in_flight=1) as (client, raw, gw):
        with pytest.raises(openai.APIStatusError) as late:
            await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=1500, temperature=0,
                                            extra_body={"specstop": {"deadline_s": 0.5, "policy": "fixed:2"}})
        first = asyncio.create_task(client.completions.create(model="specstop", prompt=PROMPT, max_tokens=60,
                                                              temperature=0))
        await wait_for(lambda: gw.running)
        with pytest.raises(openai.RateLimitError) as busy:
            await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=4)
        assert (await first).choices[0].finish_reason == "length"
        await wait_for(lambda: not clouds[0].sessions)
    assert late.value.status_code == 504 and late.value.response.json()["error"]["code"] == "deadline"
    assert busy.value.status_code == 429 and busy.value.response.json()["error"]["code"] == "overloaded"


def _mutations(seed: int, n: int) -> list:
    """Valid bodies with one field dropped, retyped, made extreme or added; non-object JSON; broken bytes."""
    import random

    rng = random.Random(seed)
    base = {"model": "specstop", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "top_p": 1, "seed": 1,
            "stop": ["\n"], "n": 1, "stream": False, "specstop": {"policy": "fixed:2", "deadline_s": 5}}
    weird = [None, True, -1, 0, 2 ** 80, -2 ** 80, 1e308, float("inf"), "", "x" * 70000, [], {}, [None], {"a": 1},
             "\x00", "fixed:0", "ｆｉｘｅｄ:2", [["nested"]]]
    out: list = []
    for _ in range(n):
        body = json.loads(json.dumps(base))
        kind = rng.randrange(5)
        key = rng.choice(list(body))
        if kind == 0:
            body.pop(key)
        elif kind == 1:
            body[key] = rng.choice(weird)
        elif kind == 2:
            body["specstop"] = rng.choice([*weird, {"policy": rng.choice(weird)}, {"deadline_s": rng.choice(weird)}])
        elif kind == 3:
            body[rng.choice(["tools", "functions", "", "max_tokens ", "\u00e9"])] = rng.choice(weird)
        else:
            raw = json.dumps(body, allow_nan=True).encode()
            out.append(rng.choice([raw[: rng.randrange(len(raw))], raw.replace(b'"', b"'"), b"\xff\xfe" + raw,
                                   json.dumps(rng.choice(weird), allow_nan=True).encode()]))
            continue
        out.append(json.dumps(body, allow_nan=True).encode())
    return out


async def test_garbage_bodies_get_openai_errors_and_the_gateway_keeps_serving(broker, pair, tmp_path):
    """No edge runs: a body that is valid gets 503 (no edge); every other one an OpenAI-shaped 4xx."""
    async with gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        statuses = Counter()
        for body in _mutations(7, 300):
            r = await raw.post("/v1/completions", content=body, headers={"content-type": "application/json"})
            statuses[r.status_code] += 1
            assert r.status_code in (400, 404, 503), (body[:200], r.status_code, r.text[:300])
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"]
        reader, writer = await asyncio.open_connection("127.0.0.1", raw.base_url.port)
        writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")  # a TLS hello / garbage on the HTTP port
        await writer.drain()
        await reader.read(1000)
        writer.close()
        assert (await raw.get("/v1/models")).status_code == 200
        assert not gw.running
    assert statuses[400] > 200


async def test_seeded_sampling_repeats_and_a_non_streamed_client_that_leaves_frees_the_verifier(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:10") as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        kw = dict(model="specstop", prompt=PROMPT, max_tokens=40, temperature=0.9, top_p=0.95, seed=5,
                  extra_body={"specstop": {"policy": "fixed:3"}})  # a learning policy's lengths vary: other draws
        a = await client.completions.create(**kw)
        b = "".join([c.choices[0].text async for c in await client.completions.create(**kw, stream=True)])
        assert a.choices[0].text == b and a.usage.completion_tokens == 40
        with pytest.raises(httpx.ReadTimeout):
            await raw.post("/v1/completions", timeout=0.7,
                           json={"model": "specstop", "prompt": PROMPT, "max_tokens": 1500, "temperature": 0,
                                 "specstop": {"policy": "fixed:2"}})
        await wait_for(lambda: not edge.live)
        await wait_for(lambda: not clouds[0].sessions)
        await wait_for(lambda: not gw.running)
    http = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_request"]
    assert http[-1]["code"] == "client_gone" and 0 < http[-1]["completion_tokens"] < 1500
    assert any(e["event"] == "request_cancelled" for e in read_log(tmp_path / "edge-1.jsonl"))


async def test_16_concurrent_streams_through_the_gateway_each_equal_their_reference(broker, pair, tmp_path):
    docs = corpus_documents()
    prompts = [docs[i][: 60 + 7 * i] for i in range(16)]
    refs = [reference(pair, p, 24) for p in prompts]

    async def one(client, i, p):
        chunks = [c async for c in await client.completions.create(
            model="specstop", prompt=p, max_tokens=24, temperature=0, stream=True,
            extra_body={"specstop": {"policy": f"fixed:{1 + i % 8}"}})]
        final = chunks[-1]
        return "".join(c.choices[0].text for c in chunks), final.model_extra["specstop"]

    async with cluster(broker.url, pair, tmp_path) as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        results = await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))
    assert [text for text, _ in results] == refs
    for i, (_, stats) in enumerate(results):
        assert stats["policy"] == f"fixed:{1 + i % 8}" and stats["rounds_reported"] == stats["rounds"]
        assert 0 < stats["drafted_tokens"] <= stats["rounds"] * (1 + i % 8)  # the last round may draft fewer


@pytest.mark.slow
def test_the_gateway_process_serves_then_stops_on_sigterm_and_a_busy_port_is_one_line(broker, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pipeline.cli", "gateway", "--nats", broker.url, "--log-file",
           str(tmp_path / "gw.jsonl")]
    proc = subprocess.Popen([*cmd, "--http", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "ready: http://127.0.0.1" in proc.stdout.readline()
        health = httpx.get(f"http://127.0.0.1:{port}/health")  # no edge runs: not ready, and it says why
        assert health.status_code == 503 and health.json()["missing"][0].startswith("no heartbeat from any edge")
        assert httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"] == "specstop"
        busy = subprocess.run([*cmd, "--http", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
        assert busy.returncode == 2
        assert busy.stderr.strip().splitlines()[-1].startswith(f"specstop: error: --http 127.0.0.1:{port}: cannot")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0 and time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [e["event"] for e in read_log(tmp_path / "gw.jsonl")][-1] == "gateway_stopped"


async def test_edge_refusals_map_to_http_statuses_and_a_mid_stream_error_is_an_sse_error_event(broker, pair, tmp_path):
    from nodes.protocol.admission import EdgeLimits

    limits = EdgeLimits(max_active=1, max_queued=0, max_prompt_tokens=64)
    async with cluster(broker.url, pair, tmp_path, channel="const:10", limits=limits) as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        with pytest.raises(openai.BadRequestError) as too_long:  # the gateway allows it, the edge does not
            await client.completions.create(model="specstop", prompt="x" * 100, max_tokens=4)
        stream = await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=1500, temperature=0,
                                                 stream=True, extra_body={"specstop": {"deadline_s": 0.6,
                                                                                       "policy": "fixed:2"}})
        with pytest.raises(openai.RateLimitError) as full:  # the edge's one active slot is taken
            await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=4)
        texts = []
        with pytest.raises(openai.APIError) as mid:
            async for chunk in stream:
                texts.append(chunk.choices[0].text)
        await wait_for(lambda: not clouds[0].sessions and not gw.running)
    assert too_long.value.response.json()["error"]["code"] == "context_length_exceeded"
    assert full.value.status_code == 429 and full.value.response.json()["error"]["code"] == "overloaded"
    assert texts and "deadline" in str(mid.value)
    http = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_request"]
    assert [(e["status"], e["code"]) for e in http] == [(400, "context_length_exceeded"), (429, "overloaded"),
                                                         (504, "deadline")]
