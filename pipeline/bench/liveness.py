"""How fast failures are noticed: `specstop bench liveness [kill] [stall] --json`.

A broker and the workers run as separate processes on loopback; this process is the client.
`kill`: an edge holding 16 streams is killed with SIGKILL; reported: when each client got its error
(seconds after the kill, and its code) and the verifier's `peer_gone` event (sessions freed, how long
after the edge's last heartbeat). `stall`: two verifiers, one SIGSTOPped for 20 s while 32 greedy
streams run (new requests keep starting); reported: requests, outputs equal to target-only, the
longest waits for a chunk, and how many streams waited over 5 s.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from pipeline.orchestration.local import RunConfig, start_node
from pipeline.orchestration.run_dirs import new_run_dir
from pipeline.orchestration.workload import workload_prompts
from pipeline.transport import aio, bus
from pipeline.transport.broker import EmbeddedBroker
from pipeline.transport.client import StreamResult, generate_stream
from schemas.messages import GenerateRequest


def longest_wait(res: StreamResult) -> float:
    """The longest a stream waited for its next chunk, from its request being sent."""
    t = [res.sent_at, *sorted(res.chunk_mono)]
    return max(b - a for a, b in zip(t, t[1:])) if len(t) > 1 else float("nan")


def _events(path: Path, name: str) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if f'"{name}"' in line]


async def kill_edge(url: str, run_dir: Path, streams: int = 16) -> dict:
    cfg = RunConfig(channel="const:300", policy="fixed:4", local_policy=True, max_length=8)
    nodes = [start_node("cloud", "cloud-k", url, run_dir, cfg), start_node("edge", "edge-k", url, run_dir, cfg)]
    nc = await bus.connect(url, "bench-client", long_lived=False)
    try:
        started: set[str] = set()
        reqs = [GenerateRequest(f"k-{i}", prompt=p, max_new_tokens=2000, policy="fixed:4")
                for i, p in enumerate(workload_prompts(streams))]
        tasks = [asyncio.create_task(generate_stream(nc, r, timeout_s=60.0,
                                                     on_chunk=lambda res: started.add(res.request_id))) for r in reqs]
        while len(started) < streams:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the verifier has heard the edge's heartbeats
        os.kill(nodes[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        results = await asyncio.gather(*tasks)
        gone: list[dict] = []
        for _ in range(300):
            gone = _events(run_dir / "cloud-k.jsonl", "peer_gone")
            if gone:
                break
            await asyncio.sleep(0.1)
        return {"streams": streams,
                "client_error_s_after_kill": sorted(round(r.sent_at + r.total_s - killed, 2) for r in results),
                "client_codes": sorted({r.error_code or "" for r in results}),
                "verifier_peer_gone": gone[0] if gone else None}
    finally:
        await nc.close()
        for n in nodes:
            n.stop()


async def stall(url: str, run_dir: Path, streams: int = 32, stall_s: float = 20.0, tokens: int = 64) -> dict:
    from nodes.models.loading import load_pair
    from nodes.speculative import target_only_generate

    cfg = RunConfig(channel="const:20", policy="fixed:4", local_policy=True, max_length=8)
    nodes = [start_node("cloud", v, url, run_dir, cfg) for v in ("cloud-s1", "cloud-s2")]
    nodes.append(start_node("edge", "edge-s", url, run_dir, cfg))
    pair = load_pair(load_draft=False)
    prompts = workload_prompts(streams)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), tokens).token_ids
            for p in prompts]
    nc = await bus.connect(url, "bench-client", long_lived=False)
    results: list[tuple[int, StreamResult]] = []
    gate = asyncio.Semaphore(streams)

    async def one(i: int) -> None:
        try:
            req = GenerateRequest(f"s-{i}", prompt=prompts[i % streams], max_new_tokens=tokens, policy="fixed:4")
            results.append((i, await generate_stream(nc, req, timeout_s=120.0)))
        finally:
            gate.release()

    try:
        await asyncio.sleep(3.0)  # every worker has heard the others' heartbeats
        tasks, i, t0, stopped = [], 0, time.monotonic(), None
        while True:
            now = time.monotonic()
            if stopped is None and now - t0 > 5.0:
                os.kill(nodes[0].pid, signal.SIGSTOP)
                stopped = now
            if stopped is not None and now - stopped > stall_s:
                break
            await gate.acquire()
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        os.kill(nodes[0].pid, signal.SIGCONT)
        await asyncio.gather(*tasks)
    finally:
        await nc.close()
        for n in nodes:
            n.stop()
    waits = sorted((longest_wait(r) for _, r in results), reverse=True)
    return {"requests": len(results), "ok": sum(r.ok for _, r in results),
            "exact": sum(1 for k, r in results if r.ok and r.token_ids == refs[k % streams]),
            "longest_waits_s": [round(w, 2) for w in waits[:6]], "streams_waiting_over_5s": sum(w > 5 for w in waits),
            "stall_s": stall_s, "streams": streams}


async def main(which: list[str]) -> dict:
    run_dir = new_run_dir("runs")
    out: dict = {"run_dir": str(run_dir)}
    with EmbeddedBroker(run_dir) as broker:
        if "kill" in which:
            out["kill"] = await kill_edge(broker.url, run_dir)
        if "stall" in which:
            out["stall"] = await stall(broker.url, run_dir)
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--json"]
    print(json.dumps(aio.run(main(args or ["kill", "stall"])), indent=2))
