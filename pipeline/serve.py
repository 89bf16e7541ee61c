"""Long-lived node processes: `specstop cloud` and `specstop edge`.

Each loads only its half of the pair, sets its own torch thread count, connects
(probe, then endless reconnects) and serves until SIGINT/SIGTERM.
"""
from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

from nodes.models.loading import load_pair, set_threads
from pipeline import bus, logs
from pipeline.channel import parse_channel
from schemas.codec import DEFAULT_MAX_PAYLOAD, Limits


@dataclass
class NodeOptions:
    nats_url: str
    node_id: str
    log_file: str | None
    threads: int = 1
    draft: str | None = None
    target: str | None = None
    device: str = "cpu"
    max_length: int = 8
    max_payload: int = DEFAULT_MAX_PAYLOAD
    model_nice: int = 5  # the model thread yields the CPU to event loops and the broker (WorkerBase)


def limits_for(vocab: int, opts: NodeOptions) -> Limits:
    return Limits(max_payload=opts.max_payload, max_draft_length=max(opts.max_length, 1), vocab_size=vocab)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_cloud(opts: NodeOptions, max_sessions: int, session_ttl_s: float) -> None:
    from nodes.cloud import CloudConfig, CloudWorker

    log = logs.configure(opts.node_id, opts.log_file)
    set_threads(opts.threads)
    pair = load_pair(opts.draft, opts.target, device=opts.device, load_draft=False)
    nc = await bus.connect(opts.nats_url, opts.node_id, log)
    worker = CloudWorker(nc, pair.target, pair.vocab_size, CloudConfig(opts.node_id, max_sessions, session_ttl_s),
                         limits_for(pair.vocab_size, opts), log, model_nice=opts.model_nice)
    await worker.start()
    await _wait_for_signal()
    await worker.stop()
    await nc.drain()
    log.info("cloud_stopped", rounds=worker.rounds)


def default_policy_for(pair, max_length: int):
    """Safe default before the controller speaks: the theory's best length from the
    bundled pair's shipped profile (at the measured delay), else a fixed length."""
    from control import load_profile, make_policy
    from nodes.models.loading import BUNDLED_DRAFT, BUNDLED_PROFILE, BUNDLED_TARGET

    if pair.draft_name == BUNDLED_DRAFT and pair.target_name == BUNDLED_TARGET and BUNDLED_PROFILE.exists():
        return make_policy("oracle", max_length=max_length, profile=load_profile(BUNDLED_PROFILE))
    return make_policy("fixed:4", max_length=max_length)


async def serve_edge(opts: NodeOptions, channel_spec: str, policy: str, seed: int, local_policy: bool = True) -> None:
    from nodes.edge import EdgeConfig, EdgeWorker, PolicyBook

    log = logs.configure(opts.node_id, opts.log_file)
    channel = parse_channel(channel_spec, seed=seed)
    set_threads(opts.threads)
    pair = load_pair(opts.draft, opts.target, device=opts.device, load_target=False)
    nc = await bus.connect(opts.nats_url, opts.node_id, log)
    cfg = EdgeConfig(opts.node_id, policy, opts.max_length, seed=seed)
    book = PolicyBook(opts.max_length, seed, learn_locally=local_policy,
                      fallback=default_policy_for(pair, opts.max_length))
    worker = EdgeWorker(nc, pair, cfg, limits_for(pair.vocab_size, opts), log, channel, book,
                        model_nice=opts.model_nice)
    await worker.start()
    await _wait_for_signal()
    await worker.stop()
    await nc.drain()
    log.info("edge_stopped")


async def serve_control(nats_url: str, node_id: str, log_file: str | None, max_length: int, seed: int) -> None:
    from nodes.controller import Controller

    log = logs.configure(node_id, log_file)
    nc = await bus.connect(nats_url, node_id, log)
    ctl = Controller(nc, log, max_length=max_length, seed=seed)
    await ctl.start()
    await _wait_for_signal()
    await ctl.stop()
    await nc.drain()
