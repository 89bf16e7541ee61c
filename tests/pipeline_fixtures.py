"""Fixtures for tests over a real nats-server: a broker per test session, in-process workers per test."""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path

from nodes.cloud import CloudConfig, CloudWorker
from nodes.edge import EdgeConfig, EdgeWorker, PolicyBook
from pipeline import bus, logs
from pipeline.channel import parse_channel
from schemas.codec import Limits


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def cluster(url: str, pair, log_dir: Path, channel: str = "const:0", clouds: int = 1,
                  edge_id: str = "edge-1", policy: str = "auto", max_sessions: int = 128, local_policy: bool = True):
    """One edge and `clouds` verifiers in this event loop, each on its own NATS connection."""
    limits = Limits(max_draft_length=8, vocab_size=pair.vocab_size)
    conns, workers = [], []
    try:
        cloud_workers = []
        for i in range(clouds):
            vid = f"cloud-{i + 1}"
            nc = await bus.connect(url, vid)
            conns.append(nc)
            w = CloudWorker(nc, pair.target, pair.vocab_size, CloudConfig(vid, max_sessions=max_sessions), limits,
                            logs.configure(vid, log_dir / f"{vid}.jsonl"))
            await w.start()
            cloud_workers.append(w)
        nc = await bus.connect(url, edge_id)
        conns.append(nc)
        edge = EdgeWorker(nc, pair, EdgeConfig(edge_id, policy, 8, request_timeout_s=5.0), limits,
                          logs.configure(edge_id, log_dir / f"{edge_id}.jsonl"), parse_channel(channel, seed=1),
                          PolicyBook(8, 0, learn_locally=local_policy))
        await edge.start()
        workers = [*cloud_workers, edge]
        client = await bus.connect(url, "client", long_lived=False)
        conns.append(client)
        for c in conns:
            await c.flush()
        yield client, edge, cloud_workers
    finally:
        for w in workers:
            await w.stop()
        for c in conns:
            await c.close()
        await asyncio.sleep(0)
