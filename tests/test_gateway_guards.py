"""The HTTP gateway under hostile and broken input, over real HTTP on loopback and a real nats-server:
bodies bounded before any work on their content, parsing and tokenizing off the event loop, a 4xx
for every malformed body (fuzzed with hypothesis) and every response counted, slow or oversized
request heads closed, a connection cap, and a /health that is ready only while its edge's
heartbeats say it hears a verifier (the heartbeats are published here by hand, standing in for the
edge, on the real broker)."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pipeline import logs
from pipeline.http.gateway import GatewayConfig
from pipeline.http.serve import start_gateway
from pipeline.transport import bus
from schemas import subjects
from schemas.codec import encode
from schemas.messages import AliveMsg
from tests.pipeline_fixtures import cluster, read_log, start_cloud, wait_for

ERROR_KEYS = {"message", "type", "param", "code"}


@asynccontextmanager
async def gateway(url: str, tokenizer, log_dir: Path, **cfg):
    log = logs.configure("gateway-1", log_dir / "gateway-1.jsonl")
    nc = await bus.connect(url, "gateway-1", log)
    gw, metrics, server = await start_gateway(nc, GatewayConfig(**cfg), tokenizer, log)
    raw = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=60)
    try:
        yield raw, gw, server.port
    finally:
        await raw.aclose()
        await server.stop()
        await gw.stop()
        await nc.close()


async def until(check, timeout: float = 20.0):
    """Poll the async `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def counted(text: str, name: str = "specstop_gateway_requests_total") -> Counter:
    out: Counter = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] += s.value
    return out


def is_error(r: httpx.Response) -> bool:
    err = r.json()["error"]
    return set(err) == ERROR_KEYS and bool(err["message"]) and isinstance(err["code"], str)


# --- /health ---------------------------------------------------------------------------------------

async def test_health_is_ready_only_while_its_edge_sends_heartbeats_and_hears_a_verifier(broker, pair, tmp_path):
    edge = await bus.connect(broker.url, "edge-h")
    seq = iter(range(1, 10_000))

    async def beat(verifiers: int, draining: bool = False, node_id: str = "edge-h", subject_edge: str = "edge-h"):
        await edge.publish(subjects.edge_alive(subject_edge), encode(AliveMsg("edge", node_id, next(seq), 3, draining,
                                                                              verifiers)))
        await edge.flush()

    async def health_says(status: int, fragment: str):
        r = await raw.get("/health")
        text = " | ".join(r.json().get("missing", []))
        return r if r.status_code == status and fragment in text else None

    try:
        async with gateway(broker.url, pair.tokenizer, tmp_path, edge_id="edge-h", heartbeat_window_s=2.5) as \
                (raw, gw, _):
            r = await raw.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "unavailable"
            assert r.json()["missing"][0].startswith("no heartbeat from edge edge-h since the gateway started")
            await beat(0)
            await until(lambda: health_says(503, "edge edge-h hears no verifier"))
            await beat(2, draining=True)
            await until(lambda: health_says(503, "edge edge-h is draining"))
            await beat(2, node_id="edge-x")      # another id on edge-h's subject: refused, not counted
            await beat(2, subject_edge="edge-z")  # another edge's subject: this gateway does not listen
            await edge.publish(subjects.edge_alive("edge-h"), b"\x93garbage")
            await edge.flush()
            await wait_for(lambda: len([e for e in read_log(tmp_path / "gateway-1.jsonl")
                                        if e["event"] == "bad_heartbeat"]) == 2)
            await beat(2, draining=True)
            await until(lambda: health_says(503, "edge edge-h is draining"))
            await beat(2)
            ok = await until(lambda: health_says(200, ""))
            body = ok.json()
            assert body["status"] == "ready" and "missing" not in body and body["running"] == 0
            assert [{k: v for k, v in e.items() if k != "heard_s_ago"} for e in body["edges"]] == \
                [{"edge_id": "edge-h", "verifiers": 2, "load": 3, "draining": False}]
            metrics = (await raw.get("/metrics")).text
            assert counted(metrics, "specstop_gateway_ready")[()] == 1.0
            # the edge stops: not ready after the window (2.5 s), while the gateway still serves
            down = await until(lambda: health_says(503, "no heartbeat from edge edge-h for"), timeout=20)
            assert down.json()["edges"][0]["edge_id"] == "edge-h"
            assert (await raw.get("/health/live")).status_code == 200
    finally:
        await edge.close()
    events = read_log(tmp_path / "gateway-1.jsonl")
    # one flip to ready, one back: the refused heartbeats (verifiers=2, not draining) never made it ready
    assert [e["ready"] for e in events if e["event"] == "readiness_changed"] == [False, True, False]
    bad = [e for e in events if e["event"] == "bad_heartbeat"]
    assert "edge-x" in bad[0]["error"] and bad[1]["code"] == "bad_message"
    assert not [e for e in events if e["event"] == "http_request"]  # probes are not counted as requests


async def test_a_queue_group_gateway_is_ready_when_any_edge_is_and_names_what_each_lacks(broker, pair, tmp_path):
    edges = await bus.connect(broker.url, "edges")

    async def beat(edge_id: str, verifiers: int, draining: bool = False, node_id: str | None = None):
        await edges.publish(subjects.edge_alive(edge_id), encode(AliveMsg("edge", node_id or edge_id, 1, 0, draining,
                                                                          verifiers)))
        await edges.flush()

    try:
        async with gateway(broker.url, pair.tokenizer, tmp_path) as (raw, gw, _):
            r = await raw.get("/health")
            assert r.status_code == 503 and "no heartbeat from any edge" in r.json()["missing"][0]
            await beat("edge-a", 0)
            await beat("edge-b", 1, draining=True)
            await beat("edge-a", 1, node_id="edge-c")  # forged: the subject's edge is edge-a

            async def both_named():
                r = await raw.get("/health")
                return r if r.status_code == 503 and len(r.json()["missing"]) == 2 else None

            missing = (await until(both_named)).json()["missing"]
            assert sorted(missing) == ["edge edge-a hears no verifier", "edge edge-b is draining"]
            await beat("edge-c", 1)

            async def ready():
                r = await raw.get("/health")
                return r if r.status_code == 200 else None

            body = (await until(ready)).json()
            assert [e["edge_id"] for e in body["edges"]] == ["edge-c", "edge-b", "edge-a"]  # most recent first
    finally:
        await edges.close()


async def test_health_follows_a_real_edge_as_verifiers_come_and_go(broker, pair, tmp_path):
    async def health_says(status: int, fragment: str):
        r = await raw.get("/health")
        return r if r.status_code == status and fragment in " | ".join(r.json().get("missing", [])) else None

    async with gateway(broker.url, pair.tokenizer, tmp_path, edge_id="edge-1") as (raw, gw, _):
        async with cluster(broker.url, pair, tmp_path, clouds=0):
            await until(lambda: health_says(503, "edge edge-1 hears no verifier"))
            nc, cloud = await start_cloud(broker.url, pair, tmp_path)
            try:
                body = (await until(lambda: health_says(200, ""))).json()
                assert body["edges"][0]["edge_id"] == "edge-1" and body["edges"][0]["verifiers"] == 1
            finally:
                await cloud.stop()
                await nc.close()
            await until(lambda: health_says(503, "edge edge-1 hears no verifier"))  # after the edge's window
        await until(lambda: health_says(503, "no heartbeat from edge edge-1 for"))  # the edge stopped


# --- bodies: bounded before any work, off the event loop ------------------------------------------

class GatedTokenizer:
    """The bundled tokenizer, but `encode` first waits (at most 20 s) for `gate`: shows which thread
    tokenizes (on the event loop, nothing else could run until it returns)."""

    chat_template = None

    def __init__(self, real):
        self.real, self.calls = real, 0
        self.entered, self.gate = threading.Event(), threading.Event()

    def get_vocab(self):
        return self.real.get_vocab()

    def encode(self, text, **kw):
        self.calls += 1
        self.entered.set()
        self.gate.wait(20)
        return self.real.encode(text, **kw)


async def test_tokenizing_runs_off_the_event_loop_and_a_prompt_too_long_to_fit_is_never_tokenized(broker, pair,
                                                                                                  tmp_path):
    tok = GatedTokenizer(pair.tokenizer)
    async with gateway(broker.url, tok, tmp_path) as (raw, gw, _):
        huge = json.dumps({"model": "specstop", "prompt": "é" * (1 << 20)}, ensure_ascii=False).encode()  # 2 MiB
        refused = await asyncio.gather(*(raw.post("/v1/completions", content=huge) for _ in range(8)))
        assert tok.calls == 0
        for r in refused:
            err = r.json()["error"]
            assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "prompt"
            assert "1048576 characters" in err["message"]
        prompt = "x" * 17000  # within the bound (20480 characters), a body over inline_body_bytes (16 KiB)
        task = asyncio.create_task(raw.post("/v1/completions", json={"model": "specstop", "prompt": prompt}))
        await wait_for(tok.entered.is_set)
        for path in ("/health", "/health/live", "/v1/models"):  # served while the prompt is being tokenized
            assert (await raw.get(path)).status_code in (200, 503)
        assert not tok.gate.is_set() and not task.done()
        tok.gate.set()
        r = await task
        assert r.status_code == 400 and "17000 tokens" in r.json()["error"]["message"]  # counted by the tokenizer
        assert tok.calls == 1


async def _raw_exchange(port: int, data: bytes, timeout: float = 20.0,
                        until_closed: bool = False) -> tuple[bytes, float]:
    """Send `data` on a fresh connection; read one response (or all until the server closes the
    connection): (what came back, seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(data)
    await writer.drain()
    try:
        got = await asyncio.wait_for(reader.read() if until_closed else _one_response(reader), timeout)
    finally:
        writer.close()
    return got, time.monotonic() - t0


async def _one_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_bodies_are_bounded_by_declared_length_time_and_a_shared_budget(broker, pair, tmp_path):
    async with gateway(broker.url, pair.tokenizer, tmp_path, max_body_bytes=1 << 20, body_budget_bytes=1 << 20,
                       body_timeout_s=1.0, header_timeout_s=2.0) as (raw, gw, port):
        head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        # over the cap by Content-Length: 413 at once, before a byte of the body is sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"Content-Length: 100000000\r\n\r\n")
        got = await asyncio.wait_for(_one_response(reader), 20)
        assert _status(got) == 413 and b'"request_too_large"' in got
        t0 = time.monotonic()
        while not reader.at_eof():  # the client sends its body anyway: read and dropped for a header timeout
            writer.write(b"x" * 4096)
            try:
                assert await asyncio.wait_for(reader.read(), 0.1) == b""
            except TimeoutError:
                pass
            except ConnectionError:
                break
            assert time.monotonic() - t0 < 20, "the unread body kept the connection open"
        writer.close()
        assert time.monotonic() - t0 >= 2.0 - 0.05
        # a chunked body is cut when it passes the cap
        async def chunks():
            for _ in range(40):
                yield b"x" * 65536
        r = await raw.post("/v1/completions", content=chunks())
        assert r.status_code == 413 and is_error(r)
        # a body that does not arrive within --body-timeout: 408
        got, took = await _raw_exchange(port, head + b"Content-Length: 100\r\n\r\n{\"model\":")
        assert _status(got) == 408 and b'"request_timeout"' in got and took >= 1.0
        # bodies held at once share a budget: a second large one while the first is still arriving is 429
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"model": "specstop", "prompt": "x" * 700_000}).encode()
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
        await writer.drain()
        await wait_for(lambda: gw.budget.held >= len(body))
        r = await raw.post("/v1/completions", content=body)
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded"
        writer.write(body[1000:])
        await writer.drain()
        first = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        assert _status(first) == 400 and b"characters" in first  # admitted, then over the prompt bound
        await wait_for(lambda: gw.budget.held == 0)
        small = await raw.post("/v1/completions", json={"model": "specstop", "prompt": "x"})
        assert small.status_code == 503  # admitted again: no edge runs here
    refused = [e["code"] for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_refused"]
    assert refused == ["unread_body"] * len(refused) and refused


BAD_BODIES = [
    (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
    (b'{"model": "specstop", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b"", "empty"),
    (b"  \n", "empty"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"model": "specstop", "prompt": "caf\xe9"}', "not UTF-8"),
    (b"[1, 2]", "not an array"),
    (b'"a string"', "not a string"),
    (b"null", "not null"),
    (b"12", "not a number"),
    (b'{"model": "specstop", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "too many digits"),
    (b'{"model": "specstop", "prompt": "x", "temperature": NaN}', "NaN is not a JSON number"),
    (b'{"model": "specstop", "prompt": "x", "temperature": 1e999}', "temperature"),
    (b'{"model": "specstop", "prompt": "\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"model": "\\udfff", "prompt": "x"}', "lone UTF-16 surrogate"),
    (b'{"model": "specstop", "prompt": "x", "' + b"k" * 100_000 + b'": 1}', "Extra inputs"),
    (b'{"model": "specstop", "prompt": {"text": "x"}}', "prompt"),
    (b'{"model": "specstop", "messages": [{"role": "user", "content": [[[]]]}]}', "messages[0].content"),
]


async def test_every_malformed_body_is_a_4xx_and_every_response_is_counted(broker, pair, tmp_path):
    seen: Counter = Counter()
    async with gateway(broker.url, pair.tokenizer, tmp_path) as (raw, gw, _):
        for body, fragment in BAD_BODIES:
            endpoint = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
            r = await raw.post(endpoint, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and is_error(r), (body[:80], r.text[:300])
            assert fragment in r.json()["error"]["message"] and len(r.json()["error"]["message"]) < 600, r.text[:300]
            seen[(endpoint, "400")] += 1
        for method, path, status, endpoint in (("GET", "/v1/models", 200, "/v1/models"),
                                               ("GET", "/v1/models/nope", 404, "/v1/models/{model}"),
                                               ("GET", "/nothing/here", 404, "other"),
                                               ("GET", "/v1/completions", 405, "/v1/completions"),
                                               ("POST", "/v1/completions", 503, "/v1/completions")):
            r = await raw.request(method, path, json={"model": "specstop", "prompt": "x"})
            assert r.status_code == status, r.text
            seen[(endpoint, str(status))] += 1
        await raw.get("/health")
        metrics = counted((await raw.get("/metrics")).text)
    assert metrics == Counter({(("endpoint", e), ("status", s)): float(n) for (e, s), n in seen.items()})
    lines = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_request"]
    assert len(lines) == sum(seen.values())
    assert {e["code"] for e in lines if e["status"] == 404} == {"not_found", "model_not_found"}


class BrokenTokenizer:
    """A tokenizer that fails (a bug we cannot otherwise provoke): the path of an unhandled exception."""

    chat_template = None

    def get_vocab(self):
        return {"a": 0}

    def encode(self, text, **kw):
        raise RuntimeError("tokenizer exploded")


async def test_an_unhandled_exception_is_a_500_in_the_error_shape_logged_and_counted(broker, tmp_path):
    async with gateway(broker.url, BrokenTokenizer(), tmp_path) as (raw, gw, _):
        r = await raw.post("/v1/chat/completions", json={"model": "specstop",
                                                         "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 500 and is_error(r) and r.json()["error"]["code"] == "internal"
        assert "tokenizer exploded" not in r.text  # the client learns nothing of the inside
        assert (await raw.get("/v1/models")).status_code == 200  # still serving
        metrics = (await raw.get("/metrics")).text
    assert counted(metrics)[(("endpoint", "/v1/chat/completions"), ("status", "500"))] == 1.0
    assert counted(metrics, "specstop_gateway_errors_total")[(("code", "internal"),)] == 1.0
    crash = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_request" and e["status"] == 500]
    assert len(crash) == 1 and "tokenizer exploded" in crash[0]["error"] and "Traceback" in crash[0]["exception"]


# --- fuzzing a live gateway ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def live_gateway(broker, pair, tmp_path_factory):
    """A gateway on its own event loop in a thread (hypothesis drives it with a synchronous client)."""
    box: dict = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            log = logs.configure("gateway-fuzz", tmp_path_factory.mktemp("fuzz") / "gateway-fuzz.jsonl")
            nc = await bus.connect(broker.url, "gateway-fuzz", log)
            gw, _, server = await start_gateway(nc, GatewayConfig(), pair.tokenizer, log)
            stop = asyncio.Event()
            box.update(port=server.port, loop=asyncio.get_running_loop(), stop=stop)
            ready.set()
            await stop.wait()
            await server.stop()
            await gw.stop()
            await nc.close()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60), "gateway did not start"
    with httpx.Client(base_url=f"http://127.0.0.1:{box['port']}", timeout=60) as client:
        yield client
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)


any_text = st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates too (JSON escapes them)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16)


def nested(depth: int, array: bool, in_prompt: bool) -> bytes:
    inner = b"[" * depth + b"]" * depth if array else b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"model": "specstop", "prompt": %s}' % inner if in_prompt else inner


deep = st.builds(nested, st.integers(1, 5000), st.booleans(), st.booleans())

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "stop", "n", "stream", "stream_options", "user", "specstop", "logit_bias", "echo", "logprobs"]
likely = {"model": st.just("specstop") | json_values, "prompt": any_text.filter(bool) | json_values,
          "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool"]) | json_values,
                                                      "content": any_text | json_values}), max_size=3)
          | json_values,
          "specstop": st.fixed_dictionaries({}, optional={"policy": st.sampled_from(["auto", "fixed:2", "fixed:99"])
                                                          | json_values, "deadline_s": json_values})}
request_like = st.fixed_dictionaries({}, optional={f: likely.get(f, json_values) for f in FIELDS}) | \
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=6)
bodies = (st.binary(max_size=300)
          | deep
          | json_values.map(lambda v: json.dumps(v).encode())
          | request_like.map(lambda v: json.dumps(v).encode())
          | request_like.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(body=bodies, endpoint=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_any_body_gets_a_json_error_below_500_or_reaches_the_edges(live_gateway, body, endpoint):
    r = live_gateway.post(endpoint, content=body, headers={"content-type": "application/json"})
    if r.status_code == 503:  # a valid request: it reached the broker, where no edge runs
        assert r.json()["error"]["code"] == "no_edge", r.text
    else:
        assert 400 <= r.status_code < 500, (body[:200], r.status_code, r.text[:300])
    assert is_error(r), r.text[:300]


# --- connections: slow heads, big heads, too many --------------------------------------------------

async def test_slow_silent_and_oversized_request_heads_are_closed_and_the_gateway_keeps_answering(broker, pair,
                                                                                                  tmp_path):
    timeout = 1.0
    async with gateway(broker.url, pair.tokenizer, tmp_path, header_timeout_s=timeout, max_header_bytes=16384) as \
            (raw, gw, port):
        async def slowloris() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.monotonic()
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            got = b""
            try:
                while True:
                    try:  # one read(n) at a time: a timed-out read loses nothing
                        chunk = await asyncio.wait_for(reader.read(65536), 0.2)
                    except TimeoutError:
                        writer.write(b"a")  # one header byte at a time, never the end of the head
                        await writer.drain()
                        continue
                    if not chunk:
                        break
                    got += chunk
            except ConnectionError:
                pass
            finally:
                writer.close()
            return got, time.monotonic() - t0

        slow = [asyncio.create_task(slowloris()) for _ in range(40)]
        silent = asyncio.create_task(_raw_exchange(port, b"", until_closed=True))
        big, _ = await _raw_exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000,
                                     until_closed=True)
        assert _status(big) == 431 and b'"headers_too_large"' in big
        while not all(t.done() for t in slow):  # the gateway answers while they trickle
            assert (await raw.get("/v1/models")).status_code == 200
            await asyncio.sleep(0.1)
        trickled = [t.result() for t in slow]
        quiet, quiet_took = await silent
        for _, took in [*trickled, (quiet, quiet_took)]:
            assert timeout - 0.05 <= took < timeout + 15  # closed at the bound (plus what a busy machine adds)
        assert all(_status(got) == 408 and b'"header_timeout"' in got for got, _ in trickled)
        assert quiet == b""  # it sent nothing: closed without an answer
        async def only_ours():  # the server closed them all (this client's keep-alive connection remains)
            return counted((await raw.get("/metrics")).text, "specstop_gateway_connections")[()] <= 1

        await until(only_ours)
        metrics = counted((await raw.get("/metrics")).text, "specstop_gateway_connections_refused_total")
    assert metrics[(("reason", "header_timeout"),)] == 41 and metrics[(("reason", "headers_too_large"),)] == 1
    refused = [e for e in read_log(tmp_path / "gateway-1.jsonl") if e["event"] == "http_refused"]
    assert Counter(e["code"] for e in refused) == {"header_timeout": 41, "headers_too_large": 1}


async def test_connections_over_the_cap_get_503_and_a_freed_slot_serves_again(broker, pair, tmp_path):
    async with gateway(broker.url, pair.tokenizer, tmp_path, max_connections=4) as (raw, gw, port):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        got, _ = await _raw_exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", until_closed=True)
        assert _status(got) == 503 and b'"too_many_connections"' in got
        idle[0][1].close()
        await idle[0][1].wait_closed()

        async def served():
            try:
                got, _ = await _raw_exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            except ConnectionError:
                return None
            return _status(got) == 200
        assert await until(served)
        for _, w in idle[1:]:
            w.close()


async def test_a_prompt_plus_max_tokens_past_the_models_context_is_a_400_context_length_exceeded(broker, pair,
                                                                                                  tmp_path):
    async with gateway(broker.url, pair.tokenizer, tmp_path, max_tokens_limit=8192, max_context_tokens=4096) as (
            raw, _, _):
        r = await raw.post("/v1/completions", json={"model": "specstop", "prompt": "hi", "max_tokens": 5000})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
