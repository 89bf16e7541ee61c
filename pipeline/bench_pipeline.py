"""`specstop bench pipeline`: what the pipeline adds on top of the models.

One run, real processes (broker, cloud, edge) on loopback:
  * per-round overhead at zero delay and concurrency 1: round - edge_queue - draft
    - verify - queue - injected delay (timers sit around the model calls only),
    next to a bare NATS request/reply round trip measured in the same run;
  * aggregate tokens/s at 1, 8 and 32 concurrent streams;
  * at 50 ms one-way delay: ms/token of speculation vs one round trip per token
    (measured) vs the cloud streaming its own generation (modelled), and the
    cloud's verify compute per generated token vs target-only.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace

from pipeline import bus
from pipeline.analysis import summarize_rounds
from pipeline.orchestrate import RunConfig, _events_as_rounds, drive, local_cluster, new_run_dir
from pipeline.workload import run_workload, workload_prompts


async def bare_round_trip_ms(url: str, n: int = 200) -> float:
    nc = await bus.connect(url, "bench-echo", long_lived=False)
    client = await bus.connect(url, "bench-client", long_lived=False)

    async def echo(msg):
        await nc.publish(msg.reply, msg.data)

    sub = await nc.subscribe("specstop.bench.echo", cb=echo)
    await nc.flush()
    payload = b"x" * 200
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.request("specstop.bench.echo", payload, timeout=5)
        times.append((time.perf_counter() - t0) * 1e3)
    await sub.unsubscribe()
    await nc.close()
    await client.close()
    return statistics.median(times)


async def _zero_delay_part(url: str, cfg: RunConfig, requests: int, max_new: int) -> dict:
    out: dict = {"bare_nats_round_trip_ms": round(await bare_round_trip_ms(url), 3)}
    nc = await bus.connect(url, "bench", long_lived=False)
    try:
        w = await run_workload(nc, workload_prompts(8, seed=3), max_new, 1, "fixed:4")
        rounds = _events_as_rounds(w)
        overhead = [r["round_ms"] - r["edge_queue_ms"] - r["draft_ms"] - r["verify_ms"] - r["queue_ms"]
                    - 2 * r["delay_ms"] for r in rounds]
        out["median_round_overhead_ms"] = round(statistics.median(overhead), 3)
        out["p90_round_overhead_ms"] = round(sorted(overhead)[int(0.9 * len(overhead))], 3)
        out["overhead_rounds"] = len(overhead)
        out["median_round_ms_c1"] = round(statistics.median(r["round_ms"] for r in rounds), 3)
        tps = {}
        for c in (1, 8, 32):
            n = max(c, min(requests, 4 * c)) if c > 1 else 8
            w = await run_workload(nc, workload_prompts(n, seed=c), max_new, c, cfg.policy)
            toks = sum(len(s.token_ids) for s in w.streams if s.ok)
            tps[str(c)] = {"tokens_per_s": round(toks / w.wall_s, 2), "requests": n,
                           "completed": sum(s.ok for s in w.streams)}
        out["aggregate_tokens_per_s"] = tps
    finally:
        await nc.close()
    return out


def bench_pipeline(run_root: str = "runs", requests: int = 32, max_new_tokens: int = 64) -> dict:
    run_dir = new_run_dir(run_root)
    cfg = RunConfig(channel="const:0", policy="auto", run_root=run_root)
    result: dict = {"run_dir": str(run_dir)}
    with local_cluster(run_dir, cfg) as url:
        result["zero_delay"] = asyncio.run(_zero_delay_part(url, cfg, requests, max_new_tokens))
    run50 = new_run_dir(run_root)
    cfg50 = replace(cfg, channel="const:50", requests=16, concurrency=8, max_new_tokens=128, baseline_requests=8,
                    baseline_tokens=48)
    with local_cluster(run50, cfg50) as url:
        s = asyncio.run(drive(url, cfg50))
    result["delay_50ms"] = {
        "run_dir": str(run50),
        "speculative_ms_per_token": s["ms_per_token"],
        "one_round_trip_per_token_ms_per_token": s["baselines"]["one_round_trip_per_token"]["ms_per_token"],
        "speculative_vs_one_round_trip_per_token": s["speculative_vs_one_round_trip_per_token"],
        "cloud_streaming_ms_per_token_modelled": s["baselines"]["cloud_streaming"]["ms_per_token"],
        "speculative_vs_cloud_streaming": s["speculative_vs_cloud_streaming"],
        "cloud_verify_ms_per_token": s["cloud_verify_ms_per_token"],
        "target_only_cloud_ms_per_token": s["baselines"]["one_round_trip_per_token"]["cloud_verify_ms_per_token"],
        "cloud_compute_vs_target_only": s["cloud_compute_vs_target_only"],
        "tokens_per_round": s["tokens_per_round"], "lengths_chosen": s["lengths_chosen"],
    }
    return result
