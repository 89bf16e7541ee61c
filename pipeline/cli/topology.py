"""`specstop topology`: the shipped hub/leaf configs on loopback with generated identities and a throwaway
CA, real worker processes, a workload across every edge; per-edge latency, per-verifier load, the leaf
hop's extra latency; `--bench`: tokens/s with 1, 2 and 4 verifiers; `--link-drop S`: one edge's leaf link
cut for S seconds mid-workload; `--write-config DIR`: the files of a real deployment, checked, and nothing run."""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from pipeline.cli.args import emit, node_id, positive_float, positive_int


def _run(coro):
    from pipeline.transport import aio

    return aio.run(coro)


async def _stream_count(topo, edge: str) -> int:
    from pipeline.transport import bus

    nc = await bus.connect(topo.hub_url(), "ops", long_lived=False, auth=topo.auth("operator", "ops"))
    try:
        info = await nc.jetstream().stream_info("SPECSTOP_TIMING", subjects_filter=f"specstop.timing.{edge}")
        return sum((info.state.subjects or {}).values()) if info.state.subjects else 0
    finally:
        await nc.close()


def main_run(a, root: Path) -> dict:
    from pipeline.topology.run import Topology
    from pipeline.topology.workload import drive, read_rounds, start_edge, start_workers, summarize, transport_ms

    out: dict = {"edges": len(a.edges), "verifiers": len(a.verifiers), "cluster": a.cluster, "tls": True,
                 "dir": str(root)}
    with Topology(root / "topology", a.edges, a.verifiers, cluster=a.cluster) as topo:
        w = start_workers(topo, root / "run", policy=a.policy)
        try:
            results, wall, _ = _run(drive(topo, a.requests_per_edge, a.max_new_tokens, a.concurrency))
            rounds = [x for e in topo.edges for x in read_rounds(root / "run" / f"{e}.jsonl")]
            out["workload"] = summarize(results, wall, rounds)
            # the leaf hop: edge-1 alone, one request at a time, on its leaf and then on the hub directly
            e = topo.edges[0]
            for other in list(w.edges):
                w.edges.pop(other).stop()
            hop = {}
            for mode, direct in (("leaf", False), ("direct", True)):
                node = start_edge(topo, root / "run", e, direct=direct, policy=a.policy, tag=f"hop-{mode}")
                try:
                    node.wait_ready("edge_started", timeout=120)
                    _run(drive(topo, a.hop_requests, a.max_new_tokens, 1, edges=[e], direct=direct))
                    hop[mode] = transport_ms(read_rounds(node.log_file))
                finally:
                    node.stop()
            out["leaf_hop"] = {"median_transport_ms_leaf": hop["leaf"], "median_transport_ms_direct": hop["direct"],
                               "added_ms_per_round": round(hop["leaf"] - hop["direct"], 3)
                               if hop["leaf"] is not None and hop["direct"] is not None else None}
        finally:
            w.stop()
    return out


def bench_verifiers(a, root: Path) -> dict:
    """Aggregate tokens/s under one fixed concurrent load with 1, 2, 4 verifiers. Verification is made the
    bottleneck by device emulation (each verify padded to an RTX 3090 Ti-class 60 ms + 3 ms/position, one
    round per forward): on 2 CPU cores real compute cannot scale past 2 processes."""
    from pipeline.topology.run import Topology
    from pipeline.topology.workload import drive, read_rounds, start_workers, summarize

    levels = {}
    for v in (1, 2, 4):
        d = root / f"bench-{v}"
        with Topology(d / "topology", 2, v) as topo:
            w = start_workers(topo, d / "run", policy="fixed:4", control=False,
                              cloud_extra=["--emulate", "rtx-3090-ti-shared", "--max-batch", "1"])
            try:
                results, wall, _ = _run(drive(topo, a.bench_requests_per_edge, a.max_new_tokens, a.bench_concurrency))
                rounds = [x for e in topo.edges for x in read_rounds(d / "run" / f"{e}.jsonl")]
                s = summarize(results, wall, rounds)
                levels[v] = {"aggregate_tokens_per_s": s["aggregate_tokens_per_s"],
                             "completed": sum(x["completed"] for x in s["per_edge"].values()),
                             "per_verifier_rounds": s["per_verifier_rounds"], "wall_s": s["wall_s"]}
            finally:
                w.stop()
    t = {k: x["aggregate_tokens_per_s"] or 0.0 for k, x in levels.items()}
    return {"load": f"2 edges x {a.bench_concurrency} concurrent, fixed:4, {a.max_new_tokens} tokens",
            "verify_emulation": "rtx-3090-ti-shared (one device per verifier), --max-batch 1", "levels": levels,
            "ratio_2_vs_1": round(t[2] / t[1], 3) if t[1] else None,
            "ratio_4_vs_1": round(t[4] / t[1], 3) if t[1] else None}


def link_drop(a, root: Path, pair) -> dict:
    """edge-1's leaf link cut for `a.link_drop` seconds in the middle of a workload on 2 edges."""
    from nodes.speculative import target_only_generate
    from pipeline.topology.run import Topology
    from pipeline.topology.workload import drive, read_rounds, start_workers

    with Topology(root / "drop-topology", 2, 1, proxied_links=True) as topo:
        w = start_workers(topo, root / "drop-run", policy="fixed:4", control=True,
                          edge_extra=["--failover-deadline", str(a.link_drop + 20)])
        try:
            async def go():
                task = asyncio.create_task(drive(topo, a.requests_per_edge, a.max_new_tokens, a.concurrency))
                await asyncio.sleep(1.0)
                topo.cut_link("edge-1")
                t_cut = time.monotonic()
                await asyncio.sleep(a.link_drop)
                topo.restore_link("edge-1")
                return await task, time.monotonic() - t_cut

            (results, wall, prompts), _ = _run(go())
            time.sleep(3.0)  # buffered timing events drain
            wrong = 0
            for e, rs in results.items():
                for r, p in zip(rs, prompts[e]):
                    if r.ok:
                        ref = target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False),
                                                   a.max_new_tokens)
                        wrong += r.token_ids != ref.token_ids
            rounds = read_rounds(root / "drop-run" / "edge-1.jsonl")
            in_stream = _run(_stream_count(topo, "edge-1"))
            rs1 = results["edge-1"]
            return {"drop_s": a.link_drop, "requests": sum(len(x) for x in results.values()),
                    "completed": sum(r.ok for x in results.values() for r in x),
                    "failed": sorted({f"{r.error_code}: {(r.error or '').removeprefix(f'{r.error_code}: ')}"[:160] for x in results.values() for r in x
                                      if not r.ok}),
                    "wrong_outputs": wrong, "edge1_rounds_logged": len(rounds), "edge1_timing_in_stream": in_stream,
                    "timing_events_lost": max(0, len(rounds) - in_stream),
                    "edge1_max_request_s": round(max(r.total_s for r in rs1), 2), "wall_s": round(wall, 2)}
        finally:
            w.stop()


def ids(default_prefix: str):
    """A count (`2`: <prefix>-1, <prefix>-2) or a comma-separated list of ids."""
    def parse(text: str) -> list[str]:
        if text.isdigit():
            return [f"{default_prefix}-{i + 1}" for i in range(positive_int(text))]
        out = [node_id(x.strip()) for x in text.split(",")]
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"'{text}' names an id twice")
        return out

    return parse


def port(text: str) -> int:
    v = positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1..65535)")
    return v


def client_spec(text: str) -> tuple[str, str]:
    edge, sep, cid = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"'{text}' is not EDGE=CLIENT_ID")
    return node_id(edge), node_id(cid)


def cmd_write_config(a: argparse.Namespace) -> None:
    from pipeline.errors import PipelineError
    from pipeline.topology.config import Placement
    from pipeline.topology.write_config import write_config

    if a.bench or a.link_drop:
        raise PipelineError("--write-config writes files and runs nothing: drop --bench / --link-drop")
    clients = None
    if a.client:
        clients = {}
        for edge, cid in a.client:
            clients.setdefault(edge, []).append(cid)
    hosts = tuple(h.strip() for h in a.hub_host.split(","))
    placement = Placement(hosts, a.listen, a.client_port, a.leaf_port, a.cluster_port, a.device_port)
    out = write_config(Path(a.write_config), a.edges, a.verifiers, clients, a.cluster, placement)
    emit(out, a.json, render_written)


def render_written(o: dict) -> str:
    return "\n".join([
        f"specstop topology: deployment written to {o['dir']} ({o['checked']})",
        f"  hub: {', '.join(o['hubs'])}  (clients reach it at {', '.join(o['hub_urls'])})",
        *(f"  device {e}: {conf}" for e, conf in o["leaves"].items()),
        f"  {len(o['identities'])} identities (seeds/*.seed, 0600); worker environments: {o['dir']}/env/*.env",
        "  next: deploy/README.md, 'Make a deployment'"])


def cmd_topology(a: argparse.Namespace) -> None:
    import logging

    if a.write_config:
        cmd_write_config(a)
        return

    logging.getLogger("asyncio").setLevel(logging.ERROR)  # asyncio's TLS transport warns on every close
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="specstop-topology-"))
    root.mkdir(parents=True, exist_ok=True)
    out = main_run(a, root)
    if a.bench:
        out["bench_verifiers"] = bench_verifiers(a, root)
    if a.link_drop:
        from nodes.models.loading import load_pair

        out["link_drop"] = link_drop(a, root, load_pair())
    (root / "topology.json").write_text(json.dumps(out, indent=2))
    emit(out, a.json, render)


def render(o: dict) -> str:
    w = o["workload"]
    lines = [f"specstop topology: {o['edges']} edges on leaf nodes, {o['verifiers']} verifiers, "
             f"hub {'cluster of ' + str(o['cluster']) if o['cluster'] > 1 else 'single node'}, TLS + nkeys ({o['dir']})",
             f"  aggregate {w['aggregate_tokens_per_s']} tokens/s in {w['wall_s']} s; median transport/round "
             f"{w['median_transport_ms']} ms"]
    for e, x in w["per_edge"].items():
        lines.append(f"  {e}: {x['completed']}/{x['requests']} done, {x['median_ms_per_token']} ms/token, "
                     f"first chunk {x['median_first_chunk_ms']} ms, round {x['median_round_ms']} ms"
                     + (f", errors {x['errors']}" if x["errors"] else ""))
    lines.append("  verifier load (rounds): " + ", ".join(f"{k} {v}" for k, v in w["per_verifier_rounds"].items()))
    h = o["leaf_hop"]
    lines.append(f"  leaf hop: +{h['added_ms_per_round']} ms/round (transport {h['median_transport_ms_leaf']} via "
                 f"leaf vs {h['median_transport_ms_direct']} direct)")
    if "bench_verifiers" in o:
        b = o["bench_verifiers"]
        lines.append("  verifiers 1/2/4: " + " / ".join(f"{x['aggregate_tokens_per_s']}" for x in b["levels"].values())
                     + f" tokens/s; 2 vs 1 = {b['ratio_2_vs_1']}x, 4 vs 1 = {b['ratio_4_vs_1']}x ({b['verify_emulation']})")
    if "link_drop" in o:
        d = o["link_drop"]
        lines.append(f"  link drop {d['drop_s']} s: {d['completed']}/{d['requests']} completed, {d['wrong_outputs']} wrong, "
                     f"timing events lost {d['timing_events_lost']} of {d['edge1_rounds_logged']}")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("topology", help="hub + leaf nodes on loopback from deploy/ (TLS, nkeys), workers, a workload")
    p.add_argument("--edges", type=ids("edge"), default=ids("edge")("2"), metavar="N|ID,...",
                   help="edge devices: a count (edge-1, ...) or their ids (default 2)")
    p.add_argument("--verifiers", type=ids("cloud"), default=ids("cloud")("2"), metavar="N|ID,...",
                   help="verifiers: a count (cloud-1, ...) or their ids (default 2)")
    p.add_argument("--cluster", type=int, choices=(1, 3), default=1, help="hub nodes (3: a cluster)")
    p.add_argument("--requests-per-edge", type=positive_int, default=8, help="requests each edge sends")
    p.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight per edge")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--policy", default="fixed:4")
    p.add_argument("--hop-requests", type=positive_int, default=6, help="requests for the leaf-hop measurement")
    p.add_argument("--bench", action="store_true", help="also: tokens/s with 1, 2, 4 verifiers (emulated verify)")
    p.add_argument("--bench-requests-per-edge", type=positive_int, default=12, help="requests per edge in the timed part")
    p.add_argument("--bench-concurrency", type=positive_int, default=6, help="requests in flight per edge in the timed part")
    p.add_argument("--link-drop", type=positive_float, metavar="SECONDS",
                   help="also: cut edge-1's leaf link this long mid-workload")
    p.add_argument("--out", help="folder for configs, logs and topology.json (default: a new temp folder)")
    w = p.add_argument_group("--write-config DIR: a real deployment's files (configs, users, certificates, "
                             "nkey seeds, environment files), checked with nats-server -t; nothing runs")
    w.add_argument("--write-config", metavar="DIR", help="a new (or empty) folder to write the set to")
    w.add_argument("--hub-host", default="127.0.0.1", metavar="HOST[,HOST,HOST]",
                   help="how devices and workers reach the hub (one per node with --cluster 3); in its certificate")
    w.add_argument("--listen", default="0.0.0.0", metavar="ADDR", help="address the hub listens on (default 0.0.0.0)")
    w.add_argument("--client-port", type=port, default=4222, help="hub client port (default 4222)")
    w.add_argument("--leaf-port", type=port, default=7422, help="hub leaf-node port (default 7422)")
    w.add_argument("--cluster-port", type=port, default=6222, help="hub route port (--cluster 3)")
    w.add_argument("--device-port", type=port, default=4222,
                   help="each device's leaf server port on its 127.0.0.1 (default 4222)")
    w.add_argument("--client", type=client_spec, action="append", metavar="EDGE=ID",
                   help="a client identity on device EDGE (repeat; default: one per device, named as its edge)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_topology)
