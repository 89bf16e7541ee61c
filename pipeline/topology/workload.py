"""Workers on a `Topology` (real `specstop cloud|edge|control` processes, each with its own identity)
and a workload across every edge, each edge's requests sent by that device's client through its leaf.

Measured from what the processes log and what the clients receive:
- per edge: requests completed, median ms/token per request, median first-chunk latency;
- per verifier: rounds verified (its load), from the edges' round lines (`verifier_id`);
- the leaf hop: median per-round transport (network − emulated link, ms) with the edge on its leaf
  vs the same edge connected to the hub directly.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.orchestration.local import NodeProcess
from pipeline.orchestration.workload import workload_prompts
from pipeline.topology.run import Topology
from pipeline.transport import bus
from pipeline.transport.client import StreamResult, generate_stream
from schemas import subjects
from schemas.messages import GenerateRequest


@dataclass
class Workers:
    clouds: list[NodeProcess] = field(default_factory=list)
    edges: dict[str, NodeProcess] = field(default_factory=dict)
    control: NodeProcess | None = None

    def all(self) -> list[NodeProcess]:
        return [*self.clouds, *self.edges.values(), *([self.control] if self.control else [])]

    def stop(self) -> None:
        for n in self.all():
            n.stop()


def start_edge(topo: Topology, run_dir: Path, edge: str, direct: bool = False, policy: str = "fixed:4",
               extra: list[str] | None = None, tag: str = "") -> NodeProcess:
    """`specstop edge` on its leaf (or, `direct`, on the hub itself, to measure the leaf hop)."""
    url = topo.hub_url() if direct else topo.leaf_url(edge)
    args = ["--nats", url, *topo.cli_flags("edge", edge, via_leaf=not direct), "--threads", "1",
            "--channel", "const:0", "--policy", policy, "--max-length", "8", "--request-timeout", "5",
            *(extra or [])]
    where = run_dir / tag if tag else run_dir
    where.mkdir(parents=True, exist_ok=True)
    return NodeProcess("edge", edge, where, args)


def start_workers(topo: Topology, run_dir: Path, policy: str = "fixed:4", control: bool = True,
                  cloud_extra: list[str] | None = None, edge_extra: list[str] | None = None,
                  edges: list[str] | None = None) -> Workers:
    run_dir.mkdir(parents=True, exist_ok=True)
    w = Workers()
    try:
        for i, v in enumerate(topo.verifiers):
            w.clouds.append(NodeProcess("cloud", v, run_dir, ["--nats", topo.hub_url(i), *topo.cli_flags("verifier", v),
                                                              "--threads", "1", "--max-length", "8",
                                                              *(cloud_extra or [])]))
        for e in edges if edges is not None else topo.edges:
            w.edges[e] = start_edge(topo, run_dir, e, policy=policy,
                                    extra=[*(["--remote-policy"] if control else []), *(edge_extra or [])])
        if control:
            w.control = NodeProcess("control", topo.controller, run_dir,
                                    ["--nats", topo.hub_url(), *topo.cli_flags("controller", topo.controller)])
        for n in w.all():
            n.wait_ready(f"{n.kind}_started", timeout=120)
    except Exception:
        w.stop()
        raise
    return w


async def drive(topo: Topology, per_edge: int, max_new_tokens: int, concurrency: int, policy: str | None = None,
                edges: list[str] | None = None, direct: bool = False, seed: int = 0,
                timeout_s: float = 60.0) -> tuple[dict[str, list[StreamResult]], float, dict[str, list[str]]]:
    """`per_edge` requests to each edge from that device's client (`concurrency` at once per edge);
    (results per edge, wall seconds, prompts per edge)."""
    edges = edges or topo.edges
    tag = uuid.uuid4().hex[:6]
    prompts = {e: workload_prompts(per_edge, seed=seed + 11 * k) for k, e in enumerate(edges)}

    async def one_edge(e: str) -> list[StreamResult]:
        url = topo.hub_url() if direct else topo.leaf_url(e)
        nc = await bus.connect(url, f"client-{e}", long_lived=True, auth=topo.auth("client", e))
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, prompt: str) -> StreamResult:
            async with gate:
                req = GenerateRequest(f"t{tag}-{e}-{i}", prompt=prompt, max_new_tokens=max_new_tokens,
                                      temperature=0.0, seed=seed + i, policy=policy)
                return await generate_stream(nc, req, timeout_s, subject=subjects.generate(e), wait_for_edge_s=10.0)

        try:
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts[e]))))
        finally:
            await nc.close()

    t0 = time.perf_counter()
    out = await asyncio.gather(*(one_edge(e) for e in edges))
    return dict(zip(edges, out)), time.perf_counter() - t0, prompts


def read_rounds(log_file: Path, after: int = 0) -> list[dict]:
    if not log_file.exists():
        return []
    rows = []
    for line in log_file.read_text()[after:].splitlines():
        if '"event": "round"' in line:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def _median(xs) -> float | None:
    xs = list(xs)
    return round(statistics.median(xs), 3) if xs else None


def summarize(results: dict[str, list[StreamResult]], wall_s: float, rounds: list[dict]) -> dict:
    per_edge = {}
    tokens = 0
    for e, rs in results.items():
        ok = [r for r in rs if r.ok]
        tokens += sum(len(r.token_ids) for r in ok)
        per_edge[e] = {"requests": len(rs), "completed": len(ok),
                       "errors": sorted({r.error_code or r.error or "" for r in rs if not r.ok})[:3],
                       "median_ms_per_token": _median(r.total_s * 1e3 / len(r.token_ids) for r in ok if r.token_ids),
                       "median_first_chunk_ms": _median(r.chunk_times_s[0] * 1e3 for r in ok if r.chunk_times_s),
                       "median_round_ms": _median(x["round_ms"] for x in rounds if x.get("edge_id") == e)}
    load: dict[str, int] = {}
    for x in rounds:
        load[x.get("verifier_id") or "?"] = load.get(x.get("verifier_id") or "?", 0) + 1
    return {"per_edge": per_edge, "per_verifier_rounds": dict(sorted(load.items())),
            "tokens": tokens, "wall_s": round(wall_s, 3),
            "aggregate_tokens_per_s": round(tokens / wall_s, 2) if wall_s else None,
            "median_transport_ms": _median(x["network_ms"] - x.get("link_ms", 0.0) for x in rounds)}


def transport_ms(rounds: list[dict]) -> float | None:
    """Median per-round transport: network − emulated link (broker hops, TLS, codec)."""
    return _median(x["network_ms"] - x.get("link_ms", 0.0) for x in rounds)
