"""The live testbed of the experiments: one broker, one verifier, one edge per channel.

Every worker is a real process on loopback with device emulation (a Jetson-class
edge and an RTX 3090 Ti-class cloud by default), so the rounds cost what they
would on the paper's testbed while the tokens come from the real bundled pair.
Requests go to the edge of their channel (`specstop.generate.<edge_id>`) and
name their policy; policies learn inside their edge (one learner per spec per
edge, shared by that edge's requests). Each request is a virtual device of its
own (see nodes/device.py), so many run at once on two cores.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import polars as pl

from pipeline.transport import bus
from pipeline.transport.broker import EmbeddedBroker
from pipeline.transport.client import StreamResult, generate_stream
from pipeline.orchestration.local import NodeProcess, RunConfig, devices_of, start_node, write_manifest
from pipeline.orchestration.workload import workload_prompts
from schemas import subjects
from schemas.messages import GenerateRequest


@dataclass
class LabConfig:
    out: Path
    quick: bool = False
    edge_device: str | None = "jetson-orin-nano"
    cloud_device: str | None = "rtx-3090-ti"
    concurrency: int = 24
    max_length: int = 8
    max_new_tokens: int = 32
    seed: int = 0
    profile: str | None = None  # for oracle / static / head-rule policies at the edges
    trees: tuple[str, ...] | None = None  # compare's tree shapes (`--tree` values); None: its default set, (): none
    stream: tuple[int | str, ...] = ()  # compare's stream-tree widths (`edge --stream-tree --stream-width W`, W
    # may be `auto`); (): none
    stream_fill: tuple[int | str, ...] = ()  # compare's stream-tree widths run once more under `cloud --stream-fill`


@dataclass(frozen=True)
class Cell:
    """`requests` requests of one policy on one edge, prompts `prompt_offset`.. of the shared list."""

    edge: str
    policy: str
    requests: int
    prompt_offset: int = 0
    tag: str = ""


@dataclass
class CellResult:
    cell: Cell
    streams: list[StreamResult] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [s.error or "?" for s in self.streams if not s.ok]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Lab:
    def __init__(self, cfg: LabConfig, name: str, channels: dict[str, str],
                 edge_flags: dict[str, list[str]] | None = None, cloud_flags: list[str] | None = None):
        """`edge_flags`: extra command-line flags of some edges (e.g. `--tree 4x2`), by edge id;
        `cloud_flags`: of the verifier (e.g. `--stream-fill`)."""
        self.cfg = cfg
        self.edge_flags = edge_flags or {}
        self.run_dir = cfg.out / f"{name}-run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for old in self.run_dir.glob("*.jsonl"):
            old.unlink()
        self.channels = channels
        self.broker = EmbeddedBroker(self.run_dir)
        self.nodes: list[NodeProcess] = []
        self.run_cfg = RunConfig(policy="auto", local_policy=True, max_length=cfg.max_length, seed=cfg.seed,
                                 edge_device=cfg.edge_device, cloud_device=cfg.cloud_device,
                                 node_flags={"edge": [*(["--profile", cfg.profile] if cfg.profile else []),
                                                      "--max-active", "256", "--request-timeout", "30"],
                                             **({"cloud": list(cloud_flags)} if cloud_flags else {})})
        self.launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-launcher")  # children's parent

    def __enter__(self) -> "Lab":
        self.launcher.submit(self._start).result()
        return self

    def _start(self) -> None:
        self.broker.start()
        write_manifest(self.run_dir, self.run_cfg, self.broker.url)
        manifest = json.loads((self.run_dir / "manifest.json").read_text())
        manifest["channels"] = self.channels
        (self.run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        self.nodes.append(start_node("cloud", "cloud-1", self.broker.url, self.run_dir, self.run_cfg, wait=False))
        for edge, channel in self.channels.items():
            cfg = replace(self.run_cfg, node_flags={**self.run_cfg.node_flags, "edge": [
                *self.run_cfg.node_flags.get("edge", []), *self.edge_flags.get(edge, [])]})
            self.nodes.append(start_node("edge", edge, self.broker.url, self.run_dir, cfg, channel, wait=False))
        for n in self.nodes:
            n.wait_ready(f"{n.kind}_started", timeout=180)

    def __exit__(self, *exc) -> None:
        def stop():
            for n in self.nodes:
                n.stop()
            self.broker.stop()

        self.launcher.submit(stop).result()
        self.launcher.shutdown()

    def emulation(self) -> dict | None:
        return devices_of(self.run_cfg)

    async def run(self, cells: list[Cell], prompts: list[str], progress=None,
                  duration_s: float | None = None, warm_up: int = 0) -> list[CellResult]:
        """All cells' requests, interleaved (cell by cell in turn) under one concurrency limit. With
        `duration_s`, cells keep cycling through their prompts until that much time has passed (runs on
        a channel that changes in wall-clock time). `warm_up` requests (fixed lengths 1 and K in turn,
        round-robin over the edges, ids starting `warmup-`) go first through the same limit: the first
        seconds of a run cost 4-5x the transport overhead of the rest (every process's first forwards,
        every prompt's prefill at once), and rounds of short requests at low delay would take most of
        that; `measured()` drops them."""
        nc = await bus.connect(self.broker.url, "lab-client", long_lived=True)
        gate = asyncio.Semaphore(self.cfg.concurrency)
        results = [CellResult(c) for c in cells]
        t0 = time.monotonic()

        async def send(req: GenerateRequest, edge: str):
            """One request through the gate (taken by the caller, released here)."""
            try:
                return await generate_stream(nc, req, timeout_s=300.0, subject=subjects.generate(edge),
                                             wait_for_edge_s=60.0)
            finally:
                gate.release()

        async def one(ci: int, i: int) -> None:
            c = cells[ci]
            rid = f"{slug(c.tag or c.policy)}-{c.edge}-{c.prompt_offset + i}"  # ends in the prompt's index: pairing
            res = await send(GenerateRequest(rid, prompt=prompts[(c.prompt_offset + i) % len(prompts)],
                                             max_new_tokens=self.cfg.max_new_tokens, policy=c.policy,
                                             seed=self.cfg.seed + i), c.edge)
            results[ci].streams.append(res)
            if progress is not None:
                progress(res)

        async def warm(k: int) -> None:
            edge = list(self.channels)[k % len(self.channels)]
            policy = "fixed:1" if k // len(self.channels) % 2 == 0 else f"fixed:{self.cfg.max_length}"
            await send(GenerateRequest(f"{WARMUP_PREFIX}{edge}-{k}", prompt=prompts[k % len(prompts)],
                                       max_new_tokens=self.cfg.max_new_tokens, policy=policy), edge)

        tasks = []
        try:
            for k in range(warm_up):
                await gate.acquire()
                tasks.append(asyncio.create_task(warm(k)))
            i = 0
            while True:
                live = [ci for ci, c in enumerate(cells) if duration_s is not None or i < c.requests]
                if not live or (duration_s is not None and time.monotonic() - t0 >= duration_s):
                    break
                for ci in live:
                    await gate.acquire()
                    tasks.append(asyncio.create_task(one(ci, i)))
                i += 1
            await asyncio.gather(*tasks)
        finally:
            await nc.close()
        return results


WARMUP_PREFIX = "warmup-"


async def logged(run_dir: Path, results: list[CellResult], timeout_s: float = 15.0) -> pl.DataFrame:
    """The run's measured rounds once every round of `results` is in the logs: an edge writes a round's
    log line just after sending its chunk, so the client can finish a moment before the line is there."""
    from pipeline.analysis import load_run

    want = sum(max(s.chunk_seqs) + 1 for r in results for s in r.streams if s.ok and s.chunk_seqs)
    deadline = time.monotonic() + timeout_s
    while True:
        rounds = measured(load_run(run_dir).rounds)
        if rounds.height >= want or time.monotonic() > deadline:
            return rounds
        await asyncio.sleep(0.2)


def measured(rounds: pl.DataFrame) -> pl.DataFrame:
    """The rounds of a lab run without its warm-up requests."""
    return rounds.filter(~pl.col("request_id").str.starts_with(WARMUP_PREFIX))


def lab_prompts(n: int, seed: int = 0) -> list[str]:
    """Real documentation openings (the pair's domain), 120-200 characters."""
    return [p[:200] for p in workload_prompts(n, chars=200, seed=seed)]


def save(cfg: LabConfig, name: str, result: dict) -> Path:
    path = cfg.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return path


def config_dict(cfg: LabConfig) -> dict:
    d = asdict(cfg)
    d["out"] = str(cfg.out)
    return d


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 1)
