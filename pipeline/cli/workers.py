"""Long-lived processes: the broker and the cloud, edge and control workers."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import time
from pathlib import Path

from control import load_profile, make_policy
from control.stream_width import DEFAULT_WIDTHS
from pipeline.transport.jetstream import StreamLimits
from nodes.config import MAX_LEARNERS, MAX_LENGTH, StreamShape, check_calibration
from nodes.protocol.calibration import MAX_CALIBRATION_ROUNDS
from nodes.link import parse_channel
from nodes.models.loading import BUNDLED_PROFILE
from nodes.protocol.admission import EdgeLimits
from nodes.protocol.stream_tree import Limits as StreamTreeLimits
from nodes.protocol.tree_shape import parse_tree
from nodes.protocol.verifier_table import TableConfig
from pipeline.cli import preflight
from pipeline.cli.args import (AHEAD_HELP, TREE_HELP, device_profile, log_args, metrics_arg, nats_arg, node_args, node_id, non_negative_float,
                               non_negative_int, positive_float, positive_int, prefill_chunk, rounds_in_flight,
                               stop_on_sigterm)
from pipeline.errors import PipelineError
from pipeline.orchestration.run_dirs import new_run_dir
from pipeline.orchestration.signals import interrupt_then_stop_now
from pipeline.orchestration.serve import CloudOptions, EdgeOptions, NodeOptions, serve_cloud, serve_control, serve_edge
from pipeline.transport import aio
from pipeline.transport.broker import EmbeddedBroker, ServerLogRelay, broker_log, default_nats_url

STREAM_WIDTH = StreamShape().width
STREAM_BATCH = StreamShape().batch
MAX_STREAM_BATCH = 256  # the live tree's node bound (nodes/protocol/stream_tree.Limits): no more to expand


def stream_tree_args(p) -> None:
    p.add_argument("--stream-tree", nargs="?", const="on", choices=("on", "auto"), default=None,
                   help="no rounds: stream one growing draft tree and take the verifier's verdicts as they come "
                        "(the continuous speculation tree, docs/stream-tree.md; wire schema v4); 'auto': per "
                        "request, the stream tree or rounds, whichever this edge's measurements model cheaper")
    p.add_argument("--stream-width", type=_stream_width, default=STREAM_WIDTH,
                   help=f"--stream-tree: the draft's top tokens a node gets as children (1..{StreamTreeLimits().max_width}), "
                        f"or 'auto': learned per request from this edge's own requests, starting at {STREAM_WIDTH} "
                        f"(widths {','.join(map(str, DEFAULT_WIDTHS))}; control/stream_width.py)")
    p.add_argument("--stream-batch", type=int, default=STREAM_BATCH,
                   help=f"--stream-tree: frontier nodes expanded per draft forward (1..{MAX_STREAM_BATCH}; an "
                        "emulated edge device charges one drafting step per forward, whatever the count)")


def _stream_width(text: str) -> int | str:
    """`--stream-width`: a whole number (its range is checked with the other stream-tree flags) or 'auto'."""
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a width (1..{StreamTreeLimits().max_width}) or 'auto', "
                                         f"got {text!r}") from None


def _kill_server(broker: EmbeddedBroker) -> None:
    """SIGKILL the nats-server and reap it, from a signal handler: no Popen.wait (its lock may be held by
    the stop that the signal interrupted), so no orphan is left when the command stops at once."""
    proc = broker.proc
    if proc is not None and proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
        except OSError:  # already gone, or already reaped
            pass


def cmd_broker(a: argparse.Namespace) -> None:
    run_dir = new_run_dir(a.run_root)
    store = Path(a.store_dir) if a.store_dir else Path(a.run_root) / "jetstream"
    new_store = not store.exists()
    broker = EmbeddedBroker(run_dir, port=a.port, store_dir=store)
    interrupt_then_stop_now(lambda: _kill_server(broker))  # a second signal during the stop ends it at once
    try:
        broker.start()
    except Exception:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing ran: leave no empty folders behind
        if new_store:
            shutil.rmtree(store, ignore_errors=True)
        if not any(Path(a.run_root).iterdir()):
            Path(a.run_root).rmdir()
        raise
    log = broker_log(a.id, a.log_file)
    with broker as b:
        log.info("broker_started", url=b.url, run_dir=str(run_dir), store_dir=str(store),
                 server_log=str(run_dir / "broker" / "nats-server.log"))
        relay = ServerLogRelay(run_dir / "broker" / "nats-server.log", log)
        try:
            while b.proc and b.proc.poll() is None:
                relay.poll()
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("broker_stopping")  # nats-server gets SIGTERM (SIGKILL after 5 s); a second signal: at once
        code = b.proc.poll() if b.proc else None
        relay.poll()
        if code in (None, 0):
            log.info("broker_stopped")
        else:
            log.error("broker_exited", code=code)
    if code not in (None, 0) and code > 0:
        raise PipelineError(f"nats-server exited with code {code}; see {run_dir / 'broker'}")


def _node_options(a: argparse.Namespace):
    return NodeOptions(default_nats_url(a.nats), a.id, a.log_file, a.threads, a.draft, a.target, a.device,
                       a.max_length, model_nice=a.model_nice, drain_timeout_s=a.drain_timeout, emulate=a.emulate,
                       metrics=a.metrics, dtype=a.dtype)


def _check_device(a: argparse.Namespace, half: str) -> None:
    device_profile(a.emulate, half)


def cmd_cloud(a: argparse.Namespace) -> None:
    _check_device(a, "verify")
    preflight.check_model(a.target, "target")  # a path that cannot load is refused before the broker probe
    try:  # the quotas' own rules (e.g. a share above the cap), before any model loads
        TableConfig(a.id, a.max_sessions, max_sessions_per_edge=a.max_sessions_per_edge,
                    max_rounds_per_edge=a.max_rounds_per_edge, max_ahead=a.max_ahead)
    except ValueError as exc:
        raise PipelineError(re.sub(r"\bmax_\w+", lambda m: "--" + m[0].replace("_", "-"), str(exc))) from None
    aio.run(serve_cloud(_node_options(a), CloudOptions(a.max_sessions, a.session_ttl, a.evict_idle,
                                                       a.max_context_tokens, a.max_batch, a.batch_wait_ms,
                                                       not a.no_slot_cache, a.slot_memory_mb,
                                                       a.prefill_chunk or None, a.max_sessions_per_edge,
                                                       a.max_rounds_per_edge, graphs=a.graphs, max_ahead=a.max_ahead,
                                                       batch_invariant=a.batch_invariant,
                                                       stream_fill=a.stream_fill)))


def _bundled_profile():
    return load_profile(BUNDLED_PROFILE)


def check_stream_tree(a: argparse.Namespace) -> None:
    """--stream-tree replaces rounds, so it takes no tree shape and no rounds in flight (one line, before
    any model loads); --stream-width and --stream-batch need it."""
    if not getattr(a, "stream_tree", False):
        if getattr(a, "stream_width", None) not in (None, STREAM_WIDTH):
            raise PipelineError("--stream-width sets the stream tree's width: add --stream-tree")
        if getattr(a, "stream_batch", None) not in (None, STREAM_BATCH):
            raise PipelineError("--stream-batch sets the stream tree's nodes per draft forward: add --stream-tree")
        return
    if a.ahead > 1 or a.tree not in (None, "off"):
        raise PipelineError("--stream-tree streams one tree instead of rounds: drop --tree and --ahead")
    top = StreamTreeLimits().max_width
    if a.stream_width != "auto" and not 1 <= a.stream_width <= top:
        raise PipelineError(f"--stream-width must be 1..{top} (children per node), got {a.stream_width}")
    batch = getattr(a, "stream_batch", STREAM_BATCH)
    if not 1 <= batch <= MAX_STREAM_BATCH:
        raise PipelineError(f"--stream-batch must be 1..{MAX_STREAM_BATCH} (nodes per draft forward), got {batch}")


def _fixed_width(width: int | str) -> int:
    """The stream tree's (first) width: `auto` starts at the default."""
    return STREAM_WIDTH if width == "auto" else int(width)


def cmd_edge(a: argparse.Namespace) -> None:
    parse_channel(a.channel)  # refuse a bad spec before loading anything
    preflight.check_model(a.draft, "draft")
    profile = load_profile(a.profile) if a.profile else None
    make_policy(a.policy, max_length=a.max_length, profile=profile or _bundled_profile())
    parse_tree(a.tree)
    check_stream_tree(a)
    try:
        check_calibration(a.calibrate_rounds, a.tree not in (None, "off") or a.ahead > 1 or bool(a.stream_tree))
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    _check_device(a, "draft")
    limits = EdgeLimits(a.max_active, a.max_queued, a.max_prompt_tokens, a.max_new_tokens_limit, a.max_request_s)
    aio.run(serve_edge(_node_options(a), EdgeOptions(a.channel, a.policy, a.seed, not a.remote_policy,
                                                     a.request_timeout, a.failover_deadline, limits, a.profile,
                                                     a.draft_max_batch, a.draft_batch_wait_ms,
                                                     not a.no_draft_slot_cache, a.draft_slot_memory_mb,
                                                     not a.random_placement, a.tree, a.ahead,
                                                     _fixed_width(a.stream_width) if a.stream_tree else None,
                                                     a.stream_tree == "auto", a.stream_batch,
                                                     a.stream_width == "auto", a.calibrate_rounds)))


def cmd_control(a: argparse.Namespace) -> None:
    stream = StreamLimits(a.stream_max_msgs, a.stream_max_bytes, a.stream_max_age)
    aio.run(serve_control(default_nats_url(a.nats), a.id, a.log_file, a.max_length, a.seed, stream,
                          a.max_learners, metrics_addr=a.metrics))


def register(sub) -> None:
    p = sub.add_parser("broker", help="run an embedded nats-server (JetStream kept across restarts)")
    p.add_argument("--port", type=int, default=4222, help="port on 127.0.0.1 (-1 picks a free one)")
    p.add_argument("--run-root", default="runs", help="parent of the run directory (server log, ports file)")
    p.add_argument("--store-dir", help="JetStream store, kept across restarts (default: RUN_ROOT/jetstream)")
    p.add_argument("--id", type=node_id, default="broker", help="node id (names its log events)")
    log_args(p)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("cloud", help="serve the target model: verify drafts")
    node_args(p, "cloud-1")
    c = CloudOptions()  # the options own the defaults; the parser only shows them
    p.add_argument("--max-sessions", type=positive_int, default=c.max_sessions,
                   help="sessions held at once (the cap)")
    p.add_argument("--max-sessions-per-edge", type=positive_int, default=c.max_sessions_per_edge,
                   help="sessions held at once for one edge (its fair share; default: half of --max-sessions); "
                        "beyond it the edge is answered 'overloaded'")
    p.add_argument("--max-rounds-per-edge", type=positive_int, default=c.max_rounds_per_edge,
                   help="rounds of one edge waiting or computing at once (default: its session share); "
                        "beyond it 'overloaded'")
    p.add_argument("--max-ahead", type=non_negative_int, default=c.max_ahead,
                   help="rounds drafted ahead (edge --ahead) one session may have waiting behind its round in "
                        "flight; beyond it 'overloaded' (0: such rounds are answered 'version')")
    p.add_argument("--session-ttl", type=positive_float, default=c.session_ttl_s,
                   help="seconds an idle session is kept")
    p.add_argument("--evict-idle", type=positive_float, default=c.evict_idle_s,
                   help="at the cap, a session idle this many seconds may make room for a new one")
    p.add_argument("--max-context-tokens", type=positive_int, default=c.max_context_tokens,
                   help="tokens one session may hold (prompt + generated); larger contexts are refused")
    p.add_argument("--max-batch", type=positive_int, default=c.max_batch, help="rounds verified in one batched forward")
    p.add_argument("--batch-wait-ms", type=non_negative_float, default=c.batch_wait_ms,
                   help="the longest a round waits for others to join its batch (0: no waiting)")
    p.add_argument("--no-slot-cache", action="store_true",
                   help="verify every round on the per-request KV cache (no slots, no batched forward)")
    p.add_argument("--slot-memory-mb", type=positive_int, default=c.slot_memory_mb,
                   help="K/V memory of the slot cache; sessions that do not fit run per request")
    p.add_argument("--prefill-chunk", type=prefill_chunk, default=c.prefill_chunk,
                   help="context tokens prefilled per batch, so a long prompt does not stall other streams' "
                        "rounds (0: a whole prompt at once; auto: 256 on a CPU, measured at startup on a GPU)")
    p.add_argument("--graphs", choices=("auto", "on", "off"), default=c.graphs,
                   help="verify at static shapes replayed as CUDA graphs (auto: on for CUDA; 'on' on a CPU runs "
                        "the static path eagerly)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="one forward per round, so no verdict depends on which rounds share a batch (costs "
                        "about one batch-1 step per round)")
    p.add_argument("--stream-fill", action="store_true",
                   help="a stream-tree session with nothing to verify commits the target's own next token "
                        "(exact; one target forward per filled token: costs a shared cloud throughput)")
    p.set_defaults(func=cmd_cloud)

    p = sub.add_parser("edge", help="serve generate requests with the draft model")
    node_args(p, "edge-1")
    e, lim = EdgeOptions(), EdgeLimits()  # the options own the defaults; the parser only shows them
    p.add_argument("--channel", default=e.channel, help="link emulation spec (see README)")
    p.add_argument("--policy", default=e.policy, help="default policy spec for requests that name none")
    p.add_argument("--seed", type=int, default=e.seed)
    p.add_argument("--remote-policy", action="store_true",
                   help="act on snapshots from `specstop control` instead of learning in-process")
    p.add_argument("--request-timeout", type=positive_float, default=e.request_timeout_s,
                   help="seconds one attempt of a round waits for its verdict")
    p.add_argument("--failover-deadline", type=positive_float, default=e.failover_deadline_s,
                   help="seconds a round may wait for any verifier before the request fails")
    p.add_argument("--max-active", type=positive_int, default=lim.max_active, help="requests generating at once")
    p.add_argument("--max-queued", type=non_negative_int, default=lim.max_queued,
                   help="requests waiting for a slot; beyond, requests are answered 'overloaded'")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=lim.max_prompt_tokens, help="longest prompt accepted (tokens)")
    p.add_argument("--max-new-tokens-limit", type=positive_int, default=lim.max_new_tokens,
                   help="largest max_new_tokens a request may ask for")
    p.add_argument("--max-request-s", type=positive_float, default=lim.max_request_s,
                   help="no request runs longer (a request's own deadline may be shorter)")
    p.add_argument("--profile", help="control profile for oracle / static:D / head-rule policies "
                                     "(default: the bundled pair's; see `specstop calibrate`)")
    p.add_argument("--draft-max-batch", type=positive_int, default=e.draft_max_batch, help="rounds drafted in one batch")
    p.add_argument("--draft-batch-wait-ms", type=non_negative_float, default=e.draft_batch_wait_ms,
                   help="the longest a round waits for others to join its draft batch (0: no waiting)")
    p.add_argument("--no-draft-slot-cache", action="store_true",
                   help="draft every request on its own KV cache (no slots, no batched drafting)")
    p.add_argument("--draft-slot-memory-mb", type=positive_int, default=e.draft_slot_memory_mb,
                   help="K/V memory of the draft slot cache; requests that do not fit draft per request")
    p.add_argument("--random-placement", action="store_true",
                   help="start each session wherever the verifier queue group sends it, instead of on the least "
                        "loaded verifier this edge knows (by the queue times in its verdicts)")
    p.add_argument("--tree", default=e.tree, help=TREE_HELP)
    p.add_argument("--ahead", type=rounds_in_flight, default=e.ahead, help=AHEAD_HELP)
    p.add_argument("--calibrate-rounds", type=non_negative_int, default=e.calibrate_rounds, metavar="M",
                   help=f"at start-up, time M rounds of every draft length on a prompt of the edge's own and give "
                        f"their compute to its policies (auto then skips learning C(L) from served rounds; "
                        f"0..{MAX_CALIBRATION_ROUNDS}, chains only; 0: none)")
    stream_tree_args(p)
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser("control", help="control subscriber: learn from timing events, publish policy updates")
    nats_arg(p)
    p.add_argument("--id", type=node_id, default="control-1", help="node id (names its subjects and log)")
    metrics_arg(p)
    log_args(p)
    stream = StreamLimits()  # the stream's and the controller's own defaults; the parser only shows them
    p.add_argument("--max-length", type=positive_int, default=MAX_LENGTH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-learners", type=positive_int, default=MAX_LEARNERS,
                   help="learners kept in memory (least recently used ones wait in the bucket)")
    p.add_argument("--stream-max-msgs", type=positive_int, default=stream.max_msgs, help="timing stream: events kept")
    p.add_argument("--stream-max-bytes", type=positive_int, default=stream.max_bytes,
                   help="timing stream: bytes kept")
    p.add_argument("--stream-max-age", type=positive_float, default=stream.max_age_s,
                   help="timing stream: seconds an event is kept")
    p.set_defaults(func=cmd_control)
