"""Start a local cluster (broker, cloud, edge as separate processes) and drive workloads.

`specstop demo` = a fresh run directory, an embedded broker, one cloud and one
edge process, the streaming workload, a target-only baseline through the same
pipeline, and a summary. `specstop run` drives a workload against workers that
are already running.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from nodes.config import MAX_LENGTH
from nodes.device import load_device
from nodes.models.loading import BUNDLED_DRAFT, BUNDLED_TARGET, model_hash
from pipeline.transport import aio, bus
from pipeline.analysis import analyze_run, summarize_rounds
from pipeline.transport.broker import EmbeddedBroker, die_with_parent, stop_process
from pipeline.errors import PipelineError
from pipeline.orchestration.run_dirs import new_run_dir
from pipeline.orchestration.workload import WorkloadResult, run_workload, workload_prompts

DEFAULT_CHANNEL = "markov:10,40,80:0.95"


@dataclass
class RunConfig:
    requests: int = 32
    concurrency: int = 8
    max_new_tokens: int = 128
    channel: str = DEFAULT_CHANNEL
    policy: str = "auto"
    seed: int = 0
    temperature: float = 0.0
    max_length: int = MAX_LENGTH
    baseline_requests: int = 8
    baseline_tokens: int = 48
    run_root: str = "runs"
    draft: str | None = None
    target: str | None = None
    local_policy: bool = False  # demo: the control subscriber learns; True keeps learning in the edge
    node_flags: dict[str, list[str]] = field(default_factory=dict)  # extra flags per worker kind
    edge_device: str | None = None   # device profiles to emulate (nodes/device.py); None: this machine as is
    cloud_device: str | None = None


def project_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent.parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_manifest(run_dir: Path, cfg: RunConfig, broker_url: str) -> None:
    draft, target = cfg.draft or BUNDLED_DRAFT, cfg.target or BUNDLED_TARGET
    manifest = {"created": datetime.now(timezone.utc).isoformat(), "config": asdict(cfg), "broker": broker_url,
                "seeds": {"workload": cfg.seed, "channel": cfg.seed, "policy": cfg.seed},
                "models": {"draft": {"name": draft, "hash": model_hash(draft)},
                           "target": {"name": target, "hash": model_hash(target)}},
                "commit": project_commit(), "python": platform.python_version(), "host_cpus": os.cpu_count(),
                "event_loop": aio.loop_name(), "emulation": devices_of(cfg)}
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def devices_of(cfg: RunConfig) -> dict | None:
    """The emulated devices of a run (full profiles, for the manifest), or None: this machine as is."""
    if not (cfg.edge_device or cfg.cloud_device):
        return None
    return {role: load_device(name).to_dict() if name else None
            for role, name in (("edge", cfg.edge_device), ("cloud", cfg.cloud_device))}


class NodeProcess:
    """One worker as a child process; its JSON log is `<run_dir>/<node_id>.jsonl`. It dies with
    the process that started it (PR_SET_PDEATHSIG), so a killed demo leaves no workers behind."""

    def __init__(self, kind: str, node_id: str, run_dir: Path, args: list[str]):
        self.kind, self.node_id = kind, node_id
        self.log_file = run_dir / f"{node_id}.jsonl"
        self.stderr = open(run_dir / f"{node_id}.stderr", "a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", kind, "--id", node_id,
                                      "--log-file", str(self.log_file), *args],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, env=env,
                                     preexec_fn=die_with_parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, event: str, timeout: float = 90.0, after: int = 0) -> None:
        """Wait for `event` in the log, counting only lines past byte `after` (a restarted node's log
        already holds the first start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = Path(self.stderr.name).read_text().strip().splitlines()
                raise PipelineError(f"{self.node_id} exited at start: {err[-1] if err else self.proc.returncode}")
            if self.log_file.exists() and f'"event": "{event}"' in self.log_file.read_text()[after:]:
                return
            time.sleep(0.1)
        raise PipelineError(f"{self.node_id} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.stderr.close()


def node_args(kind: str, url: str, cfg: RunConfig, channel: str | None = None) -> list[str]:
    """Command-line flags of one worker of this run (`cfg.node_flags[kind]` appended)."""
    model = [*(["--draft", cfg.draft] if cfg.draft else []), *(["--target", cfg.target] if cfg.target else [])]
    common = ["--nats", url, "--max-length", str(cfg.max_length)]
    if kind == "cloud":
        args = [*common, "--threads", "1", *model, *(["--emulate", cfg.cloud_device] if cfg.cloud_device else [])]
    elif kind == "edge":
        args = [*common, "--threads", "1", "--channel", channel or cfg.channel, "--policy", cfg.policy,
                "--seed", str(cfg.seed), *model, *([] if cfg.local_policy else ["--remote-policy"]),
                *(["--emulate", cfg.edge_device] if cfg.edge_device else [])]
    else:
        args = [*common, "--seed", str(cfg.seed)]
    return [*args, *cfg.node_flags.get(kind, [])]


def start_node(kind: str, node_id: str, url: str, run_dir: Path, cfg: RunConfig, channel: str | None = None,
               wait: bool = True) -> NodeProcess:
    node = NodeProcess(kind, node_id, run_dir, node_args(kind, url, cfg, channel))
    if wait:
        try:
            node.wait_ready(f"{kind}_started")
        except Exception:
            node.stop()
            raise
    return node


def start_cluster(url: str, run_dir: Path, cfg: RunConfig, edges: int = 1, clouds: int = 1,
                  edge_channels: list[str] | None = None) -> list[NodeProcess]:
    channels = edge_channels or [cfg.channel]
    nodes = [start_node("cloud", f"cloud-{i + 1}", url, run_dir, cfg, wait=False) for i in range(clouds)]
    nodes += [start_node("edge", f"edge-{i + 1}", url, run_dir, cfg, channels[i % len(channels)], wait=False)
              for i in range(edges)]
    if not cfg.local_policy:
        nodes.append(start_node("control", "control-1", url, run_dir, cfg, wait=False))
    try:
        for n in nodes:
            n.wait_ready(f"{n.kind}_started")
    except Exception:
        for n in nodes:
            n.stop()
        raise
    return nodes


def stop_nodes(nodes: list[NodeProcess]) -> None:
    """SIGTERM to every node at once, then wait for each: the drains overlap instead of adding up."""
    for n in nodes:
        if n.alive():
            n.proc.terminate()
    for n in nodes:
        n.stop()


@contextmanager
def local_cluster(run_dir: Path, cfg: RunConfig, manifest: bool = False,
                  say: Callable[[str], None] | None = None) -> Iterator[str]:
    """Embedded broker plus cloud, edge (and controller) processes; yields the broker URL."""
    say = say or (lambda text: None)
    with EmbeddedBroker(run_dir) as broker:
        if manifest:
            write_manifest(run_dir, cfg, broker.url)
        kinds = "cloud, edge" + ("" if cfg.local_policy else ", control")
        say(f"broker on {broker.url}; starting {kinds} workers (loading models) ...")
        t0 = time.perf_counter()
        nodes = start_cluster(broker.url, run_dir, cfg)
        say(f"workers ready in {time.perf_counter() - t0:.1f} s")
        try:
            yield broker.url
        finally:
            t0 = time.perf_counter()
            say("stopping workers ...")
            stop_nodes(nodes)
            say(f"workers stopped in {time.perf_counter() - t0:.1f} s")


def _stream_stats(w: WorkloadResult) -> dict:
    ok = [s for s in w.streams if s.ok]
    tokens = sum(len(s.token_ids) for s in ok)
    first = [s.chunk_times_s[0] * 1e3 for s in ok if s.chunk_times_s]
    codes: dict[str, int] = {}
    for s in w.streams:
        if not s.ok:
            codes[s.error_code or "error"] = codes.get(s.error_code or "error", 0) + 1
    return {"requests": len(w.streams), "completed": len(ok), "failed": len(w.streams) - len(ok),
            "errors": [s.error for s in w.streams if not s.ok][:5], "error_codes": codes,
            "wall_s": round(w.wall_s, 3), "aggregate_tokens_per_s": round(tokens / w.wall_s, 2) if w.wall_s else None,
            "median_first_chunk_ms": round(statistics.median(first), 2) if first else None,
            "median_request_s": round(statistics.median(s.total_s for s in ok), 3) if ok else None}


HINTS = {"no_responders": "no edge is running: start one with `specstop edge` (and a verifier with `specstop cloud`)",
         "no_verifier": "the edge reached no verifier: start one with `specstop cloud` on the same broker",
         "timeout": "the edge stopped answering: see its log",
         "overloaded": "the edge refused work at its limits (--max-active / --max-queued)"}


def workload_failure(summary: dict) -> str | None:
    """One line naming why requests failed (None: all completed), with a hint for the usual causes."""
    if not summary.get("failed"):
        return None
    codes = summary.get("error_codes", {})
    top = max(codes, key=codes.get) if codes else "error"
    first = (summary.get("errors") or ["?"])[0]
    first = first.removeprefix(f"{top}: ")  # a stream's error already starts with its code
    hint = HINTS.get(top)
    return (f"{summary['failed']} of {summary['requests']} requests failed ({top}: {first})"
            + (f"; {hint}" if hint else ""))


def _events_as_rounds(w: WorkloadResult) -> list[dict]:
    return [asdict(e) | {"draft_length": e.length} for e in w.timing_events]


async def drive(url: str, cfg: RunConfig, baseline: bool = True, progress=None, command: str = "run") -> dict:
    """Run the workload (and the target-only baseline) against running workers; summary dict.
    No baseline runs when the workload itself failed (it would fail the same way)."""
    nc = await bus.connect(url, "specstop-client", long_lived=False)
    try:
        prompts = workload_prompts(cfg.requests, seed=cfg.seed)
        main = await run_workload(nc, prompts, cfg.max_new_tokens, cfg.concurrency, cfg.policy, cfg.temperature,
                                  cfg.seed, progress=progress)
        summary = {"command": command, "policy": cfg.policy, **({"channel": cfg.channel} if command == "demo" else {}),
                   **_stream_stats(main), **summarize_rounds(_events_as_rounds(main))}
        if baseline and cfg.policy != "target-only" and summary["completed"]:
            base = await run_workload(nc, workload_prompts(cfg.baseline_requests, seed=cfg.seed + 1),
                                      cfg.baseline_tokens, min(cfg.concurrency, cfg.baseline_requests),
                                      "target-only", 0.0, cfg.seed, progress=progress)
            b = summarize_rounds(_events_as_rounds(base))
            step_ms = b["median_verify_ms"] or 0.0
            d = summary["mean_one_way_delay_ms"] or 0.0
            streaming = step_ms + 2 * d / cfg.max_new_tokens
            summary["baselines"] = {
                "one_round_trip_per_token": {"ms_per_token": b["ms_per_token"], "measured": True,
                                             "cloud_verify_ms_per_token": b["cloud_verify_ms_per_token"],
                                             "requests": b["rounds"] and cfg.baseline_requests},
                "cloud_streaming": {"ms_per_token": round(streaming, 3), "measured": False,
                                    "model": "target step (measured) + 2 x mean one-way delay / max_new_tokens"},
            }
            spec = summary["ms_per_token"] or 0.0
            summary["speculative_vs_one_round_trip_per_token"] = round(spec / b["ms_per_token"], 3) if b["ms_per_token"] else None
            summary["speculative_vs_cloud_streaming"] = round(spec / streaming, 3) if streaming else None
            summary["cloud_compute_vs_target_only"] = (
                round(summary["cloud_verify_ms_per_token"] / b["cloud_verify_ms_per_token"], 3)
                if b["cloud_verify_ms_per_token"] else None)
        return summary
    finally:
        await nc.close()


def demo(cfg: RunConfig, progress=None, say: Callable[[str], None] | None = None) -> dict:
    """The main job: a local cluster, the workload and its baseline, the log analysis; `say` narrates."""
    run_dir = new_run_dir(cfg.run_root)
    t0 = time.perf_counter()
    with local_cluster(run_dir, cfg, manifest=True, say=say) as url:
        if say:
            say(f"running {cfg.requests} requests ({cfg.concurrency} at a time), then the target-only baseline")
        summary = aio.run(drive(url, cfg, progress=progress, command="demo"))
    summary["log_dir"] = str(run_dir)
    summary["demo_wall_s"] = round(time.perf_counter() - t0, 2)
    summary["log_analysis"] = analyze_run(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def render_summary(s: dict) -> str:
    """The summary for a person. ms/token everywhere is the ratio of sums over the run's rounds:
    (sum of round times) / (sum of tokens those rounds produced), as `specstop analyze` computes it."""
    channel = (f"channel {s['channel']}" if s.get("channel") else "channel as the edges run it (see below)")
    lines = [f"specstop {s.get('command', 'run')}: policy {s['policy']}, {channel}",
             f"  requests      {s['completed']}/{s['requests']} completed, {s['tokens']} tokens in {s['rounds']} rounds"
             f" ({s['wall_s']} s, {s['aggregate_tokens_per_s']} tokens/s aggregate)",
             f"  latency       {s['ms_per_token']} ms/token (sum of round times / sum of tokens), "
             f"first chunk median {s['median_first_chunk_ms']} ms, request median {s['median_request_s']} s",
             f"  per round     {s['tokens_per_round']} tokens, acceptance {s['acceptance_rate']}, "
             f"lengths chosen {s['lengths_chosen']}",
             f"  channel       mean one-way {s['mean_one_way_delay_ms']} ms (measured), states {s['channel_states']}",
             f"  cloud compute {s['cloud_verify_ms_per_token']} ms verify per generated token"]
    if "baselines" in s:
        b = s["baselines"]
        lines += ["  baselines at the same channel (same ms/token definition):",
                  f"    one round trip per token (measured): {b['one_round_trip_per_token']['ms_per_token']} ms/token"
                  f" -> speculation is {s['speculative_vs_one_round_trip_per_token']}x of it",
                  f"    cloud streams its own generation (modelled): {b['cloud_streaming']['ms_per_token']} ms/token"
                  f" -> speculation is {s['speculative_vs_cloud_streaming']}x of it"
                  + ("  (speculation loses here: the delay dominates compute)" if (s['speculative_vs_cloud_streaming'] or 0) > 1 else ""),
                  f"    cloud compute per token vs target-only: {s['cloud_compute_vs_target_only']}x"]
    if s.get("errors"):
        lines.append(f"  errors: {s['errors']}")
    if "log_dir" in s:
        lines.append(f"  logs          {s['log_dir']}  (specstop analyze {s['log_dir']})")
    return "\n".join(lines)
