"""Long-lived node processes: `specstop cloud`, `specstop edge`, `specstop control`.

Each loads only its half of the pair, sets its own torch thread count, connects
(probe, then endless reconnects) and serves until SIGINT/SIGTERM; then it
drains within a bounded time (the worker's own `stop`), writes what is still
buffered to the broker and closes. A second signal stops at once.

The workers (nodes.cloud, nodes.edge: torch and transformers, 2-6 s) and the metrics server
(prometheus_client, ~0.3 s) are imported inside the function that runs them, so the CLI that
imports this module answers --help and refuses bad flags at once.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from control import load_profile, make_policy
from pipeline.transport.confirm import confirm_sent
from nodes.device import load_device
from pipeline.transport.jetstream import StreamLimits
from nodes.models.loading import BUNDLED_DRAFT, BUNDLED_PROFILE, BUNDLED_TARGET, load_pair, set_threads
from nodes.policy_book import PolicyBook
from nodes.config import DRAIN_TIMEOUT_S, MAX_LEARNERS, MAX_LENGTH, CloudConfig, EdgeConfig, StreamShape
from nodes.link import parse_channel
from nodes.protocol.admission import EdgeLimits
from pipeline.transport import bus
from pipeline.transport.auth import role_inbox
from pipeline import logs
from pipeline.orchestration.signals import on_stop_signals
from schemas.codec import DEFAULT_MAX_PAYLOAD, Limits
from schemas import subjects


_CLOUD, _EDGE = CloudConfig(), EdgeConfig()  # the workers' configs own the defaults; these options pass them on


@dataclass
class NodeOptions:
    nats_url: str
    node_id: str
    log_file: str | None
    threads: int = 1
    draft: str | None = None
    target: str | None = None
    device: str = "cpu"
    max_length: int = MAX_LENGTH
    max_payload: int = DEFAULT_MAX_PAYLOAD
    model_nice: int = 5  # the model thread yields the CPU to event loops and the broker (WorkerBase)
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    emulate: str | None = None  # device profile (name or path): nodes/device.py
    metrics: str | None = None  # HOST:PORT of this worker's Prometheus /metrics (pipeline/metrics)
    dtype: str | None = None  # the weights' dtype (None: float32 on a CPU, bfloat16 on CUDA)


@dataclass
class EdgeOptions:
    channel: str = "const:0"
    policy: str = _EDGE.default_policy
    seed: int = _EDGE.seed
    local_policy: bool = True
    request_timeout_s: float = _EDGE.request_timeout_s
    failover_deadline_s: float = _EDGE.failover_deadline_s
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    profile: str | None = None  # control profile for oracle/static/head-rule policies (default: the pair's)
    draft_max_batch: int = _EDGE.drafting.max_batch
    draft_batch_wait_ms: float = _EDGE.drafting.wait_ms
    draft_slot_cache: bool = _EDGE.drafting.slot_cache
    draft_slot_memory_mb: int = _EDGE.drafting.memory_mb
    place_sessions: bool = _EDGE.place_sessions
    tree: str = "off"               # draft trees: DEPTHxWIDTH, auto, or off (chains)
    ahead: int = _EDGE.ahead        # rounds in flight per request (1: one per round trip)
    stream_width: int | None = None  # the continuous speculation tree with this width (None: rounds)
    stream_auto: bool = False        # ... or rounds, per request, by the cost rule (control/stream_choice.py)
    stream_batch: int = StreamShape().batch  # frontier nodes expanded per draft forward
    stream_width_auto: bool = False  # the width learned per request, starting at stream_width (control/stream_width.py)
    calibrate_rounds: int = _EDGE.calibrate_rounds  # timed start-up rounds per length (nodes/protocol/calibration.py)


@dataclass
class CloudOptions:
    max_sessions: int = _CLOUD.max_sessions
    session_ttl_s: float = _CLOUD.session_ttl_s
    evict_idle_s: float = _CLOUD.evict_idle_s
    max_context_tokens: int = 8192  # prompt + generated tokens one session may hold
    max_batch: int = _CLOUD.max_batch
    batch_wait_ms: float = _CLOUD.batch_wait_ms
    slot_cache: bool = _CLOUD.slot_cache
    slot_memory_mb: int = _CLOUD.slot_memory_mb
    prefill_chunk: int | str | None = "auto"  # 256 on a CPU, measured on a GPU (nodes/models/prefill.py)
    max_sessions_per_edge: int | None = _CLOUD.max_sessions_per_edge  # None: half of max_sessions
    max_rounds_per_edge: int | None = _CLOUD.max_rounds_per_edge      # None: the session share
    graphs: str = "auto"            # static-shape verify as CUDA graphs: auto (on for CUDA), on, off
    batch_invariant: bool = _CLOUD.batch_invariant
    max_ahead: int = _CLOUD.max_ahead  # rounds drafted ahead one session may have waiting (0: refused, `version`)
    stream_fill: bool = _CLOUD.stream_fill  # stream-tree sessions fill their idle time (docs/stream-tree.md)


def limits_for(vocab: int, opts: NodeOptions, max_context_tokens: int = 32768) -> Limits:
    return Limits(max_payload=opts.max_payload, max_draft_length=max(opts.max_length, 1), vocab_size=vocab,
                  max_context_tokens=max_context_tokens)


async def _wait_for_signal() -> None:
    """Return at the first SIGINT/SIGTERM; a second one ends the process at once."""
    stop = asyncio.Event()
    on_stop_signals(stop)
    await stop.wait()


def _device(opts: NodeOptions):
    return load_device(opts.emulate) if opts.emulate else None


async def close_connection(nc) -> None:
    """Write what is buffered (final drafts, error replies), then close; never hang on a dead broker."""
    try:
        await confirm_sent(nc, 1.0)
    except Exception:
        pass
    await nc.close()


def with_metrics(kind: str, node_id: str, log, addr: str | None):
    """(log, metrics): with `--metrics`, the worker's log events also feed its Prometheus metrics."""
    if not addr:
        return log, None
    from pipeline.metrics import parse_hostport, serve, tap
    from pipeline.metrics.workers import KINDS

    parse_hostport(addr)
    metrics = KINDS[kind](node_id)
    metrics.server = serve(metrics.registry, addr)  # a busy port fails before any model loads
    return tap(log, metrics), metrics


def start_metrics(metrics, worker, addr: str | None):
    """Bind the state gauges to the started worker (read at scrape time); the server already listens."""
    if metrics is None or not addr:
        return None
    metrics.bind(worker)
    worker.log.info("metrics_serving", url=metrics.server.url)
    return metrics.server


def stop_metrics(server) -> None:
    if server is not None:
        server.close()


def say(kind: str, node_id: str, text: str) -> None:
    """One line for the person who started the worker (stdout); the JSON log has the same as events."""
    print(f"specstop {kind} {node_id}: {text}", flush=True)


async def serve_cloud(opts: NodeOptions, cloud: CloudOptions) -> None:
    from nodes.cloud import CloudWorker

    log, metrics = with_metrics("cloud", opts.node_id, logs.configure(opts.node_id, opts.log_file), opts.metrics)
    await bus.probe(opts.nats_url)  # no broker: say so before seconds of model loading
    say("cloud", opts.node_id, f"loading the target model ({opts.target or 'bundled'}) ...")
    set_threads(opts.threads)
    pair = load_pair(opts.draft, opts.target, device=opts.device, dtype=opts.dtype, load_draft=False)
    chunk = cloud.prefill_chunk
    if chunk == "auto":
        from nodes.models.prefill import measure_prefill

        chunk = measure_prefill(pair.target)["chunk"]
    nc = await bus.connect(opts.nats_url, opts.node_id, log)
    cfg = CloudConfig(opts.node_id, cloud.max_sessions, cloud.session_ttl_s, evict_idle_s=cloud.evict_idle_s,
                      drain_timeout_s=opts.drain_timeout_s, max_batch=cloud.max_batch,
                      batch_wait_ms=cloud.batch_wait_ms, slot_cache=cloud.slot_cache,
                      slot_memory_mb=cloud.slot_memory_mb, prefill_chunk=chunk,
                      max_sessions_per_edge=cloud.max_sessions_per_edge,
                      max_rounds_per_edge=cloud.max_rounds_per_edge,
                      graphs={"auto": None, "on": True, "off": False}[cloud.graphs],
                      batch_invariant=cloud.batch_invariant, max_ahead=cloud.max_ahead,
                      stream_fill=cloud.stream_fill)
    worker = CloudWorker(nc, pair.target, pair.vocab_size, cfg,
                         limits_for(pair.vocab_size, opts, cloud.max_context_tokens), log, model_nice=opts.model_nice,
                         device=_device(opts))
    await worker.start()
    metrics_server = start_metrics(metrics, worker, opts.metrics)
    say("cloud", opts.node_id, f"ready on {opts.nats_url}, verifying drafts (SIGTERM or Ctrl-C stops)")
    await _wait_for_signal()
    await worker.stop()
    await close_connection(nc)
    stop_metrics(metrics_server)
    log.info("cloud_stopped", rounds=worker.rounds)


def profile_for(pair, explicit: str | None):
    """The control profile an edge acts on: the given file, else the bundled pair's shipped one."""
    if explicit:
        return load_profile(explicit)
    if pair.draft_name == BUNDLED_DRAFT and pair.target_name == BUNDLED_TARGET and BUNDLED_PROFILE.exists():
        return load_profile(BUNDLED_PROFILE)
    return None


def default_policy_for(profile, max_length: int):
    """Safe default before the controller speaks: the theory's best length from the profile
    (at the measured delay), else a fixed length."""
    if profile is not None:
        return make_policy("oracle", max_length=max_length, profile=profile)
    return make_policy(f"fixed:{min(4, max_length)}", max_length=max_length)


async def serve_edge(opts: NodeOptions, edge: EdgeOptions) -> None:
    from nodes.config import DraftBatchConfig
    from nodes.edge import EdgeWorker

    log, metrics = with_metrics("edge", opts.node_id, logs.configure(opts.node_id, opts.log_file), opts.metrics)
    channel = parse_channel(edge.channel, seed=edge.seed)
    await bus.probe(opts.nats_url)  # no broker: say so before seconds of model loading
    say("edge", opts.node_id, f"loading the draft model ({opts.draft or 'bundled'}) ...")
    set_threads(opts.threads)
    pair = load_pair(opts.draft, opts.target, device=opts.device, dtype=opts.dtype, load_target=False)
    nc = await bus.connect(opts.nats_url, opts.node_id, log, inbox_prefix=role_inbox("edge", opts.node_id))
    # one slot per active request; twice that, as a request's slot goes back once its last batch is done
    drafting = DraftBatchConfig(edge.draft_max_batch, edge.draft_batch_wait_ms, edge.draft_slot_cache,
                                edge.limits.max_prompt_tokens + edge.limits.max_new_tokens + opts.max_length + 1,
                                2 * edge.limits.max_active, edge.draft_slot_memory_mb)
    limits = edge.limits
    if limits.max_context_tokens is None:  # the loaded model's context, unless the caller set one
        context = getattr(pair.draft.config, "max_position_embeddings", None)
        limits = replace(limits, max_context_tokens=context if isinstance(context, int) and context > 0 else None)
    cfg = EdgeConfig(edge_id=opts.node_id, default_policy=edge.policy, max_length=opts.max_length,
                     request_timeout_s=edge.request_timeout_s, failover_deadline_s=edge.failover_deadline_s,
                     seed=edge.seed, limits=limits, drain_timeout_s=opts.drain_timeout_s, drafting=drafting,
                     place_sessions=edge.place_sessions, tree=edge.tree, ahead=edge.ahead,
                     stream_tree=None if edge.stream_width is None else StreamShape(width=edge.stream_width,
                                                                                       batch=edge.stream_batch,
                                                                                       auto=edge.stream_auto,
                                                                                       width_auto=edge.stream_width_auto),
                     calibrate_rounds=edge.calibrate_rounds)
    profile = profile_for(pair, edge.profile)
    book = PolicyBook(opts.max_length, edge.seed, learn_locally=edge.local_policy,
                      fallback=default_policy_for(profile, opts.max_length), profile=profile, pinned=edge.policy)
    limits = limits_for(pair.vocab_size, opts, edge.limits.max_prompt_tokens + edge.limits.max_new_tokens + 64)
    worker = EdgeWorker(nc, pair, cfg, limits, log, channel, book, model_nice=opts.model_nice, device=_device(opts))
    await worker.start()
    metrics_server = start_metrics(metrics, worker, opts.metrics)
    say("edge", opts.node_id, f"ready on {opts.nats_url}, serving {subjects.generate()} and "
                              f"{subjects.generate(opts.node_id)} (SIGTERM or Ctrl-C drains, then stops)")
    await _wait_for_signal()
    await worker.stop()
    await close_connection(nc)
    stop_metrics(metrics_server)
    log.info("edge_stopped")


async def serve_control(nats_url: str, node_id: str, log_file: str | None, max_length: int, seed: int,
                        stream=None, max_learners: int = MAX_LEARNERS, metrics_addr: str | None = None) -> None:
    from nodes.controller import Controller

    log, metrics = with_metrics("control", node_id, logs.configure(node_id, log_file), metrics_addr)
    nc = await bus.connect(nats_url, node_id, log, inbox_prefix=role_inbox("controller", node_id))
    ctl = Controller(nc, log, max_length=max_length, seed=seed, limits=Limits(max_draft_length=max_length),
                     max_learners=max_learners, stream=stream or StreamLimits())
    await ctl.start()
    metrics_server = start_metrics(metrics, ctl, metrics_addr)
    say("control", node_id, f"ready on {nats_url}, learning from {subjects.TIMING_PREFIX}.> (SIGTERM or Ctrl-C stops)")
    await _wait_for_signal()
    await ctl.stop()
    await close_connection(nc)
    stop_metrics(metrics_server)
