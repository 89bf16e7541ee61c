"""`specstop bench pipeline`: what the pipeline adds on top of the models.

One run, real processes (broker, cloud, edge) on loopback:
  * per-round overhead at zero delay and concurrency 1: round - edge_queue - draft
    - verify - queue - injected delay (timers sit around the model calls only),
    next to two bare NATS request/reply round trips measured in the same run:
    back to back in one process, and between two processes with a round's
    compute pattern (the requester busy for the median draft time before each
    request, the responder busy for the median verify time before replying;
    that busy time is subtracted). The second is the transport floor a round
    pays on this machine: a process that has been idle for milliseconds wakes
    up slower than one that has not;
  * aggregate tokens/s at 1, 8, 32 and 64 concurrent streams at zero delay, and at
    1 and 32 at a 20 ms one-way delay: the 32-vs-1 ratios, per-stream ms/token, the
    batch-size histogram of each worker and the per-round time breakdown from the
    logs of each level (pipeline/bench/rounds.py);
  * at 50 ms one-way delay: ms/token of speculation vs one round trip per token
    (measured) vs the cloud streaming its own generation (modelled), and the
    cloud's verify compute per generated token vs target-only;
  * `proactive` (in-process, pipeline/bench/proactive.py): rounds in flight with drafting ahead vs
    the single chain over a link with real delay, at 50 and 0 ms (alone with --only proactive).
"""
from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from nats.errors import NoRespondersError

from pipeline.transport.confirm import confirm_sent
from pipeline.transport import aio, bus
from pipeline.transport.broker import stop_process
from pipeline.bench.rounds import LogSlice, summarize
from pipeline.orchestration.local import RunConfig, _events_as_rounds, drive, local_cluster, new_run_dir
from pipeline.orchestration.workload import run_workload, workload_prompts


ECHO_SUBJECT = "specstop.bench.echo"


def _busy(ms: float) -> None:
    """Hold the CPU like model compute would (a sleep would let the core idle)."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


async def _echo(url: str, busy_ms: float, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None):
    nc = await bus.connect(url, "bench-echo", long_lived=False)

    async def reply(msg):
        _busy(busy_ms)
        await nc.publish(msg.reply, msg.data)

    sub = await nc.subscribe(ECHO_SUBJECT, cb=reply)
    await confirm_sent(nc, 10.0)
    if ready is not None:
        ready.set()
    await (stop.wait() if stop is not None else asyncio.Event().wait())
    await sub.unsubscribe()
    await nc.close()


async def _timed_requests(url: str, n: int, busy_before_ms: float = 0.0, minus_ms: float = 0.0) -> float:
    client = await bus.connect(url, "bench-client", long_lived=False)
    try:
        for _ in range(100):  # wait until the responder's subscription is visible
            try:
                await client.request(ECHO_SUBJECT, b"ping", timeout=5)
                break
            except NoRespondersError:
                await asyncio.sleep(0.05)
        payload = b"x" * 200  # about a draft message
        times = []
        for _ in range(n):
            _busy(busy_before_ms)
            t0 = time.perf_counter()
            await client.request(ECHO_SUBJECT, payload, timeout=5)
            times.append((time.perf_counter() - t0) * 1e3 - minus_ms)
        return statistics.median(times)
    finally:
        await client.close()


async def bare_round_trip_ms(url: str, n: int = 200) -> float:
    """Back to back, responder in this process: NATS with every process awake."""
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_echo(url, 0.0, ready, stop))
    await ready.wait()
    try:
        return await _timed_requests(url, n)
    finally:
        stop.set()
        await task


def bare_round_trip_with_compute_ms(url: str, draft_ms: float, verify_ms: float, n: int = 200) -> float:
    """Responder in its own process busy `verify_ms` per request, requester busy `draft_ms`
    before each: a round's pattern without the models or our code."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.bench.pipeline", "echo", url, str(verify_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return aio.run(_timed_requests(url, n, draft_ms, verify_ms))
    finally:
        stop_process(proc, timeout=5)


async def _overhead_c1(url: str, max_new: int) -> dict:
    """Zero delay, one stream, fixed length 4: what a round costs beyond its model calls."""
    nc = await bus.connect(url, "bench", long_lived=False)
    try:
        w = await run_workload(nc, workload_prompts(8, seed=3), max_new, 1, "fixed:4")
    finally:
        await nc.close()
    rounds = _events_as_rounds(w)
    overhead = sorted(r["round_ms"] - r["edge_queue_ms"] - r["draft_ms"] - r["verify_ms"] - r["queue_ms"]
                      - 2 * r["delay_ms"] for r in rounds)
    return {"median_round_overhead_ms": round(statistics.median(overhead), 3),
            "p90_round_overhead_ms": round(overhead[int(0.9 * len(overhead))], 3),
            "overhead_rounds": len(overhead),
            "median_round_ms_c1": round(statistics.median(r["round_ms"] for r in rounds), 3),
            "median_draft_ms_c1": round(statistics.median(r["draft_ms"] for r in rounds), 3),
            "median_verify_ms_c1": round(statistics.median(r["verify_ms"] for r in rounds), 3)}


async def _tokens_per_s(url: str, policy: str, requests: int, max_new: int, levels: tuple[int, ...],
                        run_dir) -> dict:
    """Per concurrency level: aggregate tokens/s, per-stream ms/token, and (from the workers' logs of
    that level only) the batch sizes and the per-round breakdown."""
    nc = await bus.connect(url, "bench", long_lived=False)
    tps = {}
    try:
        for c in levels:
            n = max(2 * c, min(requests, 4 * c)) if c > 1 else 8  # twice the streams at least: a short tail
            logs = LogSlice(run_dir / "edge-1.jsonl", run_dir / "cloud-1.jsonl")
            w = await run_workload(nc, workload_prompts(n, seed=c), max_new, c, policy)
            ok = [s for s in w.streams if s.ok]
            toks = sum(len(s.token_ids) for s in ok)
            per_tok = [s.total_s * 1e3 / len(s.token_ids) for s in ok if s.token_ids]
            await asyncio.sleep(0.5)  # the workers log a round after its chunk went out
            tps[str(c)] = {"tokens_per_s": round(toks / w.wall_s, 2), "requests": n, "completed": len(ok),
                           "errors": [s.error for s in w.streams if not s.ok][:3],
                           "per_stream_ms_per_token": round(statistics.median(per_tok), 3) if per_tok else None,
                           **summarize(logs.read())}
    finally:
        await nc.close()
    return tps


def _ratios(tps: dict) -> dict:
    """32 streams vs 1: aggregate tokens/s (goal >= 3x, 5x) and per-stream ms/token (goal <= 2x)."""
    one, many = tps.get("1", {}), tps.get("32", {})
    if not one.get("tokens_per_s") or not many.get("tokens_per_s"):
        return {}
    out = {"aggregate_32_vs_1": round(many["tokens_per_s"] / one["tokens_per_s"], 2)}
    if one.get("per_stream_ms_per_token") and many.get("per_stream_ms_per_token"):
        out["per_stream_ms_per_token_32_vs_1"] = round(many["per_stream_ms_per_token"] /
                                                       one["per_stream_ms_per_token"], 2)
    return out


def bench_pipeline(run_root: str = "runs", requests: int = 32, max_new_tokens: int = 64,
                   only: str | None = None) -> dict:
    from pipeline.bench.proactive import bench_proactive

    if only == "proactive":
        return {"proactive": bench_proactive(max_new_tokens=max_new_tokens)}
    if only is not None:
        raise ValueError(f"only={only!r}: the one sub-mode is 'proactive'")
    run_dir = new_run_dir(run_root)
    # the data plane alone (broker, cloud, edge learning locally); the controller's share is measured after
    cfg = RunConfig(channel="const:0", policy="auto", run_root=run_root, local_policy=True)
    result: dict = {"run_dir": str(run_dir)}
    with local_cluster(run_dir, cfg) as url:
        z: dict = {"event_loop": aio.loop_name(), "bare_nats_round_trip_ms": round(aio.run(bare_round_trip_ms(url)), 3)}
        z |= aio.run(_overhead_c1(url, max_new_tokens))
        floor = bare_round_trip_with_compute_ms(url, z["median_draft_ms_c1"], z["median_verify_ms_c1"])
        z["bare_nats_round_trip_with_round_compute_ms"] = round(floor, 3)
        z["overhead_above_bare_with_round_compute_ms"] = round(z["median_round_overhead_ms"] - floor, 3)
        z["aggregate_tokens_per_s"] = aio.run(_tokens_per_s(url, cfg.policy, requests, max_new_tokens,
                                                            (1, 8, 32, 64), run_dir))
        z |= _ratios(z["aggregate_tokens_per_s"])
    run_ctl = new_run_dir(run_root)
    with local_cluster(run_ctl, replace(cfg, local_policy=False)) as url:  # + controller learning every event
        z["median_round_overhead_with_controller_ms"] = aio.run(_overhead_c1(url, max_new_tokens))[
            "median_round_overhead_ms"]
    result["zero_delay"] = z
    run20 = new_run_dir(run_root)
    with local_cluster(run20, replace(cfg, channel="const:20")) as url:
        t20 = aio.run(_tokens_per_s(url, cfg.policy, requests, max_new_tokens, (1, 32), run20))
    result["delay_20ms"] = {"run_dir": str(run20), "aggregate_tokens_per_s": t20, **_ratios(t20)}
    run50 = new_run_dir(run_root)
    cfg50 = replace(cfg, local_policy=False, channel="const:50", requests=16, concurrency=8, max_new_tokens=128, baseline_requests=8,
                    baseline_tokens=48)
    with local_cluster(run50, cfg50) as url:
        s = aio.run(drive(url, cfg50))
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
        "median_link_error_ms": s["median_link_error_ms"], "p90_abs_link_error_ms": s["p90_abs_link_error_ms"],
    }
    result["proactive"] = bench_proactive(max_new_tokens=max_new_tokens)
    return result


if __name__ == "__main__":  # the responder process of bare_round_trip_with_compute_ms
    if len(sys.argv) == 4 and sys.argv[1] == "echo":
        aio.run(_echo(sys.argv[2], float(sys.argv[3])))
    else:
        sys.exit("usage: python -m pipeline.bench.pipeline echo NATS_URL BUSY_MS")
