"""`specstop bench control`: throughput and lag of the control subscriber.

* events/s: timing events already in the stream, drained by a fresh controller;
* update lag: an event published -> the edge's policy book holding the version
  that includes it (median, p99), one event at a time;
* the ms/token cost of that lag: the same workload with the controller vs
  `--local-policy` (learning inside the edge).
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace

from pipeline.transport.confirm import confirm_sent
from nodes.controller import Controller
from pipeline.transport.jetstream import ensure_stream
from nodes.policy_book import PolicyBook
from pipeline.transport import aio, bus
from pipeline import logs
from pipeline.transport.broker import EmbeddedBroker
from pipeline.orchestration.local import RunConfig, drive, local_cluster, new_run_dir
from schemas import subjects
from schemas.codec import decode, encode
from schemas.messages import PolicyUpdate, TimingEvent


def _event(edge_id: str, i: int) -> TimingEvent:
    L = 1 + i % 8
    a = (i * 5) % (L + 1)
    return TimingEvent(edge_id, f"b{i // 16}", i % 16, 0, L, a, 25.0 + 3 * L, 3.0 * L, 20.0, 0.1, 2.0, 0.0,
                       "auto", 0, "cloud-1", None, i + 1, a + 1)


async def _throughput_and_lag(url: str, run_dir, n_events: int, n_lag: int) -> dict:
    nc = await bus.connect(url, "bench-control", long_lived=False)
    js = nc.jetstream()
    await ensure_stream(js)
    for i in range(n_events):
        await js.publish(subjects.timing("bench-x"), encode(_event("bench-x", i)))
    log = logs.configure("control-bench", run_dir / "control-bench.jsonl")
    cnc = await bus.connect(url, "control-bench", long_lived=False)
    ctl = Controller(cnc, log)
    t0 = time.perf_counter()
    await ctl.start()
    while ctl.applied < n_events:
        await asyncio.sleep(0.01)
    events_per_s = n_events / (time.perf_counter() - t0)

    book = PolicyBook(8, 0, learn_locally=False)
    applied_at: dict[int, float] = {}

    async def on_update(msg):
        upd = decode(msg.data, expect=(PolicyUpdate,))
        book.apply_update(upd.policy, upd.version, upd.snapshot)
        applied_at[upd.version] = time.perf_counter()

    sub = await nc.subscribe(subjects.policy("bench-e"), cb=on_update)
    await confirm_sent(nc, 10.0)
    lags = []
    for i in range(n_lag):
        sent = time.perf_counter()
        await js.publish(subjects.timing("bench-e"), encode(_event("bench-e", i)))
        while i + 1 not in applied_at:
            await asyncio.sleep(0.0005)
        lags.append((applied_at[i + 1] - sent) * 1e3)
    await sub.unsubscribe()
    await ctl.stop()
    await cnc.close()
    await nc.close()
    lags.sort()
    return {"events_per_s": round(events_per_s, 1), "events": n_events,
            "update_lag_ms_median": round(statistics.median(lags), 3),
            "update_lag_ms_p99": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 3), "lag_samples": n_lag}


def bench_control(run_root: str = "runs", events: int = 3000, lag_samples: int = 200, requests: int = 16) -> dict:
    run_dir = new_run_dir(run_root)
    with EmbeddedBroker(run_dir) as broker:
        out = aio.run(_throughput_and_lag(broker.url, run_dir, events, lag_samples))
    cfg = RunConfig(requests=requests, concurrency=8, max_new_tokens=96, channel="markov:10,40,80:0.95",
                    run_root=run_root)
    per_mode = {}
    for local in (True, False):
        d = new_run_dir(run_root)
        c = replace(cfg, local_policy=local)
        with local_cluster(d, c) as url:
            s = aio.run(drive(url, c, baseline=False))
        per_mode["local" if local else "controller"] = {"ms_per_token": s["ms_per_token"], "run_dir": str(d),
                                                        "lengths_chosen": s["lengths_chosen"]}
    out["workload"] = per_mode
    loc, rem = per_mode["local"]["ms_per_token"], per_mode["controller"]["ms_per_token"]
    out["controller_vs_local_ms_per_token"] = round(rem / loc, 4) if loc else None
    out["run_dir"] = str(run_dir)
    return out
