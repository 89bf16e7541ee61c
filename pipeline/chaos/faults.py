"""The processes of a fault run, and the faults injected into them.

Each fault acts on the live cluster and leaves it serving again (a killed
node is replaced, a stopped one continued, the broker restarted on its port
with the same JetStream store), so the next fault starts from a healthy
cluster. Times are measured on this process's clock only.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from pipeline.transport.broker import EmbeddedBroker
from pipeline.orchestration.local import NodeProcess, RunConfig, start_node


@dataclass
class ChaosConfig:
    faults: tuple[str, ...] = ("garbage", "controller-kill", "verifier-stall", "verifier-kill", "verifier-gone",
                               "broker-kill", "edge-term")
    requests: int = 12            # at least this many per fault; the workload runs until the fault is over
    concurrency: int = 4
    max_new_tokens: int = 48
    channel: str = "const:5"
    request_timeout_s: float = 2.0     # the edge's wait for one attempt's verdict
    failover_deadline_s: float = 10.0  # the edge's wait for any verifier
    stall_s: float = 5.0               # SIGSTOP of the verifier: longer than the request timeout
    replacement_delay_s: float = 3.0   # a killed verifier's replacement starts this much later
    outage_s: float = 1.0              # the broker stays down this long
    fuzz_count: int = 10000            # fuzzed messages per subject
    inject_after_s: float = 0.8
    max_requests: int = 400
    seed: int = 0
    max_length: int = 8
    run_root: str = "runs"


@dataclass
class FaultInfo:
    """What the injection did: when it began and ended (this process's clock), and notes."""

    started: float
    ended: float = 0.0
    notes: dict = field(default_factory=dict)
    expect_unreachable: bool = False


class ChaosCluster:
    def __init__(self, run_dir: Path, cfg: ChaosConfig):
        self.run_dir, self.cfg = run_dir, cfg
        self.broker = EmbeddedBroker(run_dir, store_dir=run_dir / "jetstream")
        self.run_cfg = RunConfig(channel=cfg.channel, policy="auto", local_policy=False, max_length=cfg.max_length,
                                 seed=cfg.seed, node_flags={
                                     "edge": ["--request-timeout", f"{cfg.request_timeout_s:g}",
                                              "--failover-deadline", f"{cfg.failover_deadline_s:g}",
                                              "--drain-timeout", "30"]})
        self.nodes: dict[str, NodeProcess] = {}
        self.retired: list[NodeProcess] = []
        self.started = {"cloud": 0, "edge": 0, "control": 0}
        # children die with the *thread* that started them (PR_SET_PDEATHSIG): one thread for the whole run
        self.launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-launcher")

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self) -> None:
        self.launcher.submit(self._start_all).result()

    def _start_all(self) -> None:
        self.broker.start()
        starting = [self._launch(k, wait=False) for k in ("cloud", "edge", "control")]
        for node in starting:
            node.wait_ready(f"{node.kind}_started")

    def _launch(self, kind: str, wait: bool = True) -> NodeProcess:
        self.started[kind] += 1
        node = start_node(kind, f"{kind}-{self.started[kind]}", self.url, self.run_dir, self.run_cfg, wait=wait)
        self.nodes[kind] = node
        return node

    async def replace(self, kind: str) -> NodeProcess:
        old = self.nodes.get(kind)
        if old is not None:
            self.retired.append(old)
        return await self.in_launcher(self._launch, kind)

    async def in_launcher(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.launcher, fn, *args)

    def signal(self, kind: str, sig: int) -> None:
        os.kill(self.nodes[kind].pid, sig)

    def alive(self) -> dict[str, bool]:
        return {n.node_id: n.alive() for n in self.nodes.values()}

    def stop(self) -> None:
        for n in [*self.nodes.values(), *self.retired]:
            n.stop()
        self.broker.stop()
        self.launcher.shutdown(wait=True)


Fault = Callable[[ChaosCluster, ChaosConfig], Awaitable[FaultInfo]]


async def broker_kill(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    info = FaultInfo(time.monotonic())
    await cl.in_launcher(cl.broker.kill)
    await asyncio.sleep(cfg.outage_s)
    await cl.in_launcher(cl.broker.start_again)
    info.ended = time.monotonic()
    info.notes["broker_down_s"] = round(info.ended - info.started, 3)
    return info


async def verifier_kill(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    info = FaultInfo(time.monotonic())
    cl.signal("cloud", signal.SIGKILL)
    await asyncio.sleep(cfg.replacement_delay_s)
    node = await cl.replace("cloud")
    info.ended = time.monotonic()
    info.notes.update(replacement=node.node_id, no_verifier_s=round(info.ended - info.started, 3))
    return info


async def verifier_gone(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    """No verifier for longer than the edge's failover deadline: requests must fail clearly."""
    info = FaultInfo(time.monotonic(), expect_unreachable=True)
    cl.signal("cloud", signal.SIGKILL)
    await asyncio.sleep(cfg.failover_deadline_s + 2 * cfg.request_timeout_s + 2.0)
    info.ended = time.monotonic()
    node = await cl.replace("cloud")
    info.notes.update(replacement=node.node_id, no_verifier_s=round(time.monotonic() - info.started, 3))
    return info


async def verifier_stall(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    info = FaultInfo(time.monotonic())
    cl.signal("cloud", signal.SIGSTOP)
    try:
        await asyncio.sleep(cfg.stall_s)
    finally:
        cl.signal("cloud", signal.SIGCONT)
    info.ended = time.monotonic()
    info.notes["stalled_s"] = round(info.ended - info.started, 3)
    return info


async def controller_kill(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    info = FaultInfo(time.monotonic())
    cl.signal("control", signal.SIGKILL)
    await asyncio.sleep(1.0)
    node = await cl.replace("control")
    info.ended = time.monotonic()
    info.notes["replacement"] = node.node_id
    return info


async def edge_term(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    """SIGTERM: the edge drains (its requests finish); a replacement edge takes the new ones."""
    info = FaultInfo(time.monotonic())
    old = cl.nodes["edge"]
    cl.signal("edge", signal.SIGTERM)
    node = await cl.replace("edge")
    exited = await asyncio.to_thread(_wait_exit, old, 40.0)
    info.ended = time.monotonic()
    info.notes.update(replacement=node.node_id, old_edge_exited=exited, old_edge_exit_code=old.proc.returncode)
    return info


def _wait_exit(node: NodeProcess, timeout: float) -> bool:
    try:
        node.proc.wait(timeout=timeout)
        return True
    except Exception:
        return False


FAULTS: dict[str, Fault] = {
    "broker-kill": broker_kill, "verifier-kill": verifier_kill, "verifier-gone": verifier_gone,
    "verifier-stall": verifier_stall, "controller-kill": controller_kill, "edge-term": edge_term,
}
DESCRIPTIONS = {
    "garbage": "fuzzed messages on every subject during the workload",
    "broker-kill": "nats-server kill -9, restarted on its port with the same store",
    "verifier-kill": "verifier kill -9, a replacement starts later",
    "verifier-gone": "verifier kill -9, none for longer than the edge's failover deadline",
    "verifier-stall": "verifier SIGSTOP for longer than the edge's request timeout, then SIGCONT",
    "controller-kill": "controller kill -9, restarted (same durable consumer and bucket)",
    "edge-term": "edge SIGTERM (drains), a replacement edge starts",
}
