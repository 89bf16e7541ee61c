"""`specstop bench http`: what the OpenAI-compatible gateway adds to a request, against the NATS client path.

A broker, a verifier, an edge and a gateway run as separate processes on loopback; this process is the
client. The same greedy requests (same prompts, so the same tokens and rounds) go once through
`generate_stream` over NATS and once through `POST /v1/completions` with `stream: true` over HTTP (raw
SSE read with httpx, no client library in the measurement), interleaved, one at a time. Per request:
time to first token (send -> first chunk with text), ms per token (send -> last token, over the tokens),
inter-chunk gap. Reported: medians per path and the paired per-request differences (HTTP - NATS), whose
median is the gateway's overhead.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import httpx

from nodes.models.train_pair import corpus_documents
from pipeline.errors import PipelineError
from pipeline.orchestration.local import NodeProcess, RunConfig, local_cluster
from pipeline.orchestration.run_dirs import new_run_dir
from pipeline.transport import aio, bus
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts(n: int) -> list[str]:
    docs = [d for d in corpus_documents() if len(d) > 200]
    return [docs[(7 * i) % len(docs)][:120 + 10 * (i % 5)] for i in range(n)]


async def _nats_one(nc, i: int, prompt: str, tokens: int, policy: str) -> dict:
    req = GenerateRequest(f"bench-nats-{i}-{time.monotonic_ns()}", prompt=prompt, max_new_tokens=tokens,
                          policy=policy)
    res = await generate_stream(nc, req, 60)
    if not res.ok:
        raise PipelineError(f"NATS request failed: {res.error}")
    first = res.chunk_times_s[0]  # one chunk per round, each with >= 1 token
    gaps = [b - a for a, b in zip(res.chunk_times_s, res.chunk_times_s[1:])]
    return {"ttft_ms": first * 1e3, "ms_per_token": res.chunk_times_s[-1] * 1e3 / len(res.token_ids),
            "gap_ms": statistics.median(gaps) * 1e3 if gaps else 0.0, "tokens": len(res.token_ids),
            "events": len(res.chunk_times_s), "text": res.text}


async def _http_one(client: httpx.AsyncClient, prompt: str, tokens: int, policy: str) -> dict:
    body = {"model": "specstop", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "specstop": {"policy": policy}}
    t0 = time.perf_counter()
    times, text, used = [], [], None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise PipelineError(f"HTTP request failed: {r.status_code} {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0]["text"]:
                times.append(time.perf_counter() - t0)
                text.append(ev["choices"][0]["text"])
            if ev.get("usage"):
                used = ev["usage"]["completion_tokens"]
    if not times or used is None:
        raise PipelineError("HTTP stream ended without text or usage")
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"ttft_ms": times[0] * 1e3, "ms_per_token": times[-1] * 1e3 / used,
            "gap_ms": statistics.median(gaps) * 1e3 if gaps else 0.0, "tokens": used, "events": len(times),
            "text": "".join(text)}


def _med(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 4)


async def _measure(url: str, http_url: str, requests: int, tokens: int, policy: str, warmup: int) -> dict:
    nc = await bus.connect(url, "bench-http-client", long_lived=False)
    prompts = _prompts(requests + warmup)
    nats_rows, http_rows = [], []
    async with httpx.AsyncClient(base_url=http_url, timeout=60) as client:
        for i, p in enumerate(prompts):
            order = (_nats_one(nc, i, p, tokens, policy), _http_one(client, p, tokens, policy))
            if i % 2:  # interleave which path goes first
                order = order[::-1]
            a = await order[0]
            b = await order[1]
            n, h = (a, b) if i % 2 == 0 else (b, a)
            if i >= warmup:
                nats_rows.append(n)
                http_rows.append(h)
    await nc.close()
    same = all(n["text"] == h["text"] for n, h in zip(nats_rows, http_rows))
    diffs = {k: [h[k] - n[k] for n, h in zip(nats_rows, http_rows)] for k in ("ttft_ms", "ms_per_token", "gap_ms")}
    out = {"requests": len(nats_rows), "max_tokens": tokens, "policy": policy, "same_outputs": same,
           "median_tokens": _med(nats_rows, "tokens"), "median_rounds": _med(nats_rows, "events")}
    for name, rows in (("nats", nats_rows), ("http", http_rows)):
        out[name] = {"median_ttft_ms": _med(rows, "ttft_ms"), "median_ms_per_token": _med(rows, "ms_per_token"),
                     "median_inter_chunk_ms": _med(rows, "gap_ms"),
                     "p90_ttft_ms": round(sorted(r["ttft_ms"] for r in rows)[int(0.9 * (len(rows) - 1))], 4)}
    out["http_overhead"] = {
        "median_ttft_ms": round(statistics.median(diffs["ttft_ms"]), 4),
        "median_ms_per_token": round(statistics.median(diffs["ms_per_token"]), 4),
        "median_inter_chunk_ms": round(statistics.median(diffs["gap_ms"]), 4),
        "ms_per_token_ratio": round(out["http"]["median_ms_per_token"] / out["nats"]["median_ms_per_token"], 4),
    }
    return out


def bench_http(run_root: str = "runs", requests: int = 30, max_new_tokens: int = 64, policy: str = "fixed:4",
               channel: str = "const:0", warmup: int = 3) -> dict:
    run_dir = new_run_dir(run_root)
    cfg = RunConfig(channel=channel, policy=policy, local_policy=True, run_root=run_root)
    t0 = time.perf_counter()
    with local_cluster(run_dir, cfg) as url:
        port = _free_port()
        gw = NodeProcess("gateway", "gateway-1", Path(run_dir), ["--nats", url, "--http", f"127.0.0.1:{port}"])
        try:
            gw.wait_ready("gateway_started")
            res = aio.run(_measure(url, f"http://127.0.0.1:{port}", requests, max_new_tokens, policy, warmup))
        finally:
            gw.stop()
    res.update(channel=channel, run_dir=str(run_dir), wall_s=round(time.perf_counter() - t0, 1),
               definitions={"ttft_ms": "request sent -> first chunk with text arrives at the client",
                            "ms_per_token": "request sent -> last token arrives, divided by the tokens generated",
                            "http_overhead": "median over requests of (HTTP - NATS) for the same prompt"})
    return res
