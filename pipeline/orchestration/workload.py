"""A streaming workload of real prompts, run with bounded concurrency."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from nats.aio.client import Client

from pipeline.transport.confirm import confirm_sent
from nodes.models.train_pair import corpus_documents
from pipeline.transport.client import StreamResult, generate_stream
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode
from schemas.messages import GenerateRequest, TimingEvent


def workload_prompts(n: int, chars: int = 160, seed: int = 0) -> list[str]:
    """Openings of pydoc topics (real English/Python documentation), varied lengths."""
    docs = corpus_documents()
    out = []
    for i in range(n):
        doc = docs[(i * 7 + seed) % len(docs)]
        start = (i * 131) % max(1, len(doc) - chars)
        out.append(doc[start:start + chars // 2 + (i * 37) % chars] or doc[:chars])
    return out


@dataclass
class WorkloadResult:
    streams: list[StreamResult]
    timing_events: list[TimingEvent]
    wall_s: float


async def run_workload(nc: Client, prompts: list[str], max_new_tokens: int, concurrency: int, policy: str | None,
                       temperature: float = 0.0, seed: int = 0, timeout_s: float = 120.0,
                       progress=None) -> WorkloadResult:
    events: list[TimingEvent] = []
    tag = uuid.uuid4().hex[:8]

    async def on_timing(msg):
        try:
            ev = decode(msg.data, Limits(), expect=(TimingEvent,))
        except SchemaError:
            return
        if ev.request_id.startswith(f"req-{tag}-"):  # this workload's rounds: not an edge's calibration,
            events.append(ev)                        # nor another client's on a shared hub

    sub = await nc.subscribe(f"{subjects.TIMING_PREFIX}.>", cb=on_timing)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: str) -> StreamResult:
        async with gate:
            req = GenerateRequest(f"req-{tag}-{i}", prompt=prompt, max_new_tokens=max_new_tokens,
                                  temperature=temperature, seed=seed + i, policy=policy)
            res = await generate_stream(nc, req, timeout_s)
            if progress is not None:
                progress(res)
            return res

    t0 = time.perf_counter()
    streams = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    await confirm_sent(nc, 10.0)
    await asyncio.sleep(0.05)
    await sub.unsubscribe()
    return WorkloadResult(list(streams), events, wall)
