"""Fixtures for tests over a real nats-server: a broker per test session, in-process workers per test."""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path

from pipeline.transport.confirm import confirm_sent
from nodes.cloud import CloudConfig, CloudWorker
from nodes.edge import EdgeConfig, EdgeWorker
from nodes.policy_book import PolicyBook
from pipeline.transport import bus
from pipeline import logs
from nodes.link import parse_channel
from schemas.codec import Limits


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def cluster(url: str, pair, log_dir: Path, channel: str = "const:0", clouds: int = 1,
                  edge_id: str = "edge-1", policy: str = "auto", max_sessions: int = 128, local_policy: bool = True,
                  edge_device=None, cloud_device=None, cloud_max_batch: int = 32, cloud_options: dict | None = None,
                  **edge_options):
    """One edge and `clouds` verifiers in this event loop, each on its own NATS connection.
    `edge_options` override EdgeConfig fields (request_timeout_s, limits, drain_timeout_s, tree, ...);
    `cloud_options` CloudConfig fields (e.g. trees=False: a chain-only verifier)."""
    limits = Limits(max_draft_length=8, vocab_size=pair.vocab_size)
    conns, workers = [], []
    try:
        cloud_workers = []
        for i in range(clouds):
            vid = f"cloud-{i + 1}"
            log = logs.configure(vid, log_dir / f"{vid}.jsonl")
            nc = await bus.connect(url, vid, log)
            conns.append(nc)
            w = CloudWorker(nc, pair.target, pair.vocab_size, CloudConfig(vid, max_sessions=max_sessions, max_batch=cloud_max_batch,
                                                                        **(cloud_options or {})),
                            limits, log,
                            device=cloud_device)
            await w.start()
            cloud_workers.append(w)
        log = logs.configure(edge_id, log_dir / f"{edge_id}.jsonl")
        nc = await bus.connect(url, edge_id, log)
        conns.append(nc)
        edge_cfg = EdgeConfig(**({"edge_id": edge_id, "default_policy": policy, "max_length": 8,
                                  "request_timeout_s": 5.0} | edge_options))
        edge = EdgeWorker(nc, pair, edge_cfg, limits, log,
                          parse_channel(channel, seed=1),
                          PolicyBook(8, 0, learn_locally=local_policy), device=edge_device)
        await edge.start()
        workers = [*cloud_workers, edge]
        client = await bus.connect(url, "client", long_lived=False)
        conns.append(client)
        for c in conns:
            await confirm_sent(c, 10.0)
        yield client, edge, cloud_workers
    finally:
        for w in workers:
            await w.stop()
        for c in conns:
            await c.close()
        await asyncio.sleep(0)


async def start_edge(url: str, pair, log_dir: Path, edge_id: str, channel: str, local_policy: bool,
                     policy: str = "auto", max_length: int = 8):
    from control import make_policy

    nc = await bus.connect(url, edge_id)
    book = PolicyBook(max_length, 0, learn_locally=local_policy, fallback=make_policy("fixed:2", max_length=max_length))
    edge = EdgeWorker(nc, pair, EdgeConfig(edge_id=edge_id, default_policy=policy, max_length=max_length, request_timeout_s=5.0),
                      Limits(max_draft_length=max_length, vocab_size=pair.vocab_size),
                      logs.configure(edge_id, log_dir / f"{edge_id}.jsonl"), parse_channel(channel, seed=1), book)
    await edge.start()
    await confirm_sent(nc, 10.0)
    return nc, edge


async def start_controller(url: str, log_dir: Path, node_id: str = "control-1", batch: int = 128,
                           max_length: int = 8):
    from nodes.controller import Controller

    nc = await bus.connect(url, node_id)
    ctl = Controller(nc, logs.configure(node_id, log_dir / f"{node_id}.jsonl"), max_length=max_length, batch=batch,
                     limits=Limits(max_draft_length=max_length))
    await ctl.start()
    return nc, ctl


async def reset_jetstream(url: str) -> None:
    """Each test starts with no timing stream, consumer or policy bucket."""
    from nats.js.errors import NotFoundError

    nc = await bus.connect(url, "reset", long_lived=False)
    js = nc.jetstream()
    for fn in (lambda: js.delete_stream("SPECSTOP_TIMING"), lambda: js.delete_key_value("specstop_policies")):
        try:
            await fn()
        except NotFoundError:
            pass
        except Exception:
            pass
    await nc.close()


async def start_cloud(url: str, pair, log_dir: Path, verifier_id: str = "cloud-1", max_length: int = 8):
    nc = await bus.connect(url, verifier_id)
    w = CloudWorker(nc, pair.target, pair.vocab_size, CloudConfig(verifier_id),
                    Limits(max_draft_length=max_length, vocab_size=pair.vocab_size),
                    logs.configure(verifier_id, log_dir / f"{verifier_id}.jsonl"))
    await w.start()
    await confirm_sent(nc, 10.0)
    return nc, w


async def wait_for(pred, timeout: float = 20.0) -> None:
    """Poll `pred` until it holds; fail the test (naming nothing but the wait) after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
