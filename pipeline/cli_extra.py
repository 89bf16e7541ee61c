"""Commands that run workers, the broker, workloads and benchmarks (registered onto the main parser)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline import aio
from pipeline.broker import default_nats_url


def cmd_bench_engine(a: argparse.Namespace) -> None:
    from pipeline.bench_engine import bench_engine

    res = bench_engine(draft=a.draft, target=a.target, threads=a.threads, repeats=a.repeats,
                       max_new_tokens=a.max_new_tokens, profile_out=a.profile_out)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_pipeline(a: argparse.Namespace) -> None:
    from pipeline.bench_pipeline import bench_pipeline

    res = bench_pipeline(run_root=a.run_root, requests=a.requests, max_new_tokens=a.max_new_tokens)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must list batch sizes >= 1")
    return sizes


def cmd_bench_verify(a: argparse.Namespace) -> None:
    from pipeline.bench_verify import bench_verify

    res = bench_verify(draft=a.draft, target=a.target, device=a.device, threads=a.threads, batches=a.batches,
                       length=a.length, steps=a.steps)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_control(a: argparse.Namespace) -> None:
    from pipeline.bench_control import bench_control

    res = bench_control(run_root=a.run_root, events=a.events, lag_samples=a.lag_samples, requests=a.requests)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `with` blocks stop the child processes they started."""
    import signal

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def cmd_bench_analysis(a: argparse.Namespace) -> None:
    from pipeline.bench_analysis import bench_analysis

    res = bench_analysis(a.rounds)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_policies(a: argparse.Namespace) -> None:
    from control.evaluation import evaluate
    from control.families import all_families

    t0 = time.perf_counter()
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    members, seeds = (1, 5) if a.quick else (a.members, a.seeds)
    res = evaluate(all_families(members=members, seed=a.family_seed), policies=policies, rounds=a.rounds,
                   seeds=seeds, workers=a.workers, tuned=not a.no_tuned)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res))
        return
    print(f"{res['profiles']} generated profiles, {res['rounds']} rounds, {res['seeds']} seeds; "
          f"scenarios: {res['scenarios']}; gaps in % over each scenario's oracle ({res['wall_s']} s)")
    print(f"{'policy':<32} {'mean':>7} {'worst mean':>11} {'worst p90':>10} {'worst seed':>11} "
          f"{'cells >1% mean':>15} {'>3% worst seed':>15}")
    for spec, v in res["summary"].items():
        print(f"{spec:<32} {v['mean_gap_pct']:>7.2f} {v['worst_mean_gap_pct']:>11.2f} {v['worst_p90_pct']:>10.2f} "
              f"{v['worst_seed_pct']:>11.2f} {v['cells_over_1pct_mean']:>9}/{v['cells']:<5} "
              f"{v['cells_over_3pct_worst_seed']:>9}/{v['cells']:<5}")


def cmd_broker(a: argparse.Namespace) -> None:
    from pathlib import Path

    from pipeline.broker import EmbeddedBroker
    from pipeline.orchestrate import new_run_dir

    import shutil

    _stop_on_sigterm()
    run_dir = new_run_dir(a.run_root)
    store = Path(a.store_dir) if a.store_dir else Path(a.run_root) / "jetstream"
    broker = EmbeddedBroker(run_dir, port=a.port, store_dir=store)
    try:
        broker.start()
    except Exception:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing ran: leave no empty run directory behind
        raise
    with broker as b:
        print(json.dumps({"event": "broker_started", "url": b.url, "run_dir": str(run_dir),
                          "store_dir": str(store)}), flush=True)
        try:
            while b.proc and b.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        code = b.proc.poll() if b.proc else None
    if code not in (None, 0) and code > 0:
        from pipeline.errors import PipelineError

        raise PipelineError(f"nats-server exited with code {code}; see {run_dir / 'broker'}")


def _node_options(a: argparse.Namespace):
    from pipeline.serve import NodeOptions

    return NodeOptions(default_nats_url(a.nats), a.id, a.log_file, a.threads, a.draft, a.target, a.device,
                       a.max_length, model_nice=a.model_nice, drain_timeout_s=a.drain_timeout, emulate=a.emulate)


def _device_half(name: str | None, half: str) -> str | None:
    """`name` if it is a device profile with `half` (draft/verify) times; a one-line error otherwise,
    before any model loads."""
    from nodes.device import DeviceError, load_device

    if name:
        d = load_device(name)
        if not (d.emulates_draft if half == "draft" else d.emulates_verify):
            raise DeviceError(f"device profile '{name}' has no {half} times (fields {half}_ms_*)")
    return name


def _check_device(a: argparse.Namespace, half: str) -> None:
    _device_half(a.emulate, half)


def cmd_cloud(a: argparse.Namespace) -> None:
    from pipeline.serve import CloudOptions, serve_cloud

    _check_device(a, "verify")
    aio.run(serve_cloud(_node_options(a), CloudOptions(a.max_sessions, a.session_ttl, a.evict_idle,
                                                       a.max_context_tokens, a.max_batch, a.batch_wait_ms,
                                                       not a.no_slot_cache, a.slot_memory_mb)))


def _bundled_profile():
    from control import load_profile
    from nodes.models.loading import BUNDLED_PROFILE

    return load_profile(BUNDLED_PROFILE)


def cmd_edge(a: argparse.Namespace) -> None:
    from control import load_profile, make_policy
    from nodes.link import parse_channel
    from nodes.protocol.admission import EdgeLimits
    from pipeline.serve import EdgeOptions, serve_edge

    parse_channel(a.channel)  # refuse a bad spec before loading anything
    profile = load_profile(a.profile) if a.profile else None
    make_policy(a.policy, max_length=a.max_length, profile=profile or _bundled_profile())
    _check_device(a, "draft")
    limits = EdgeLimits(a.max_active, a.max_queued, a.max_prompt_tokens, a.max_new_tokens_limit, a.max_request_s)
    aio.run(serve_edge(_node_options(a), EdgeOptions(a.channel, a.policy, a.seed, not a.remote_policy,
                                                     a.request_timeout, a.failover_deadline, limits, a.profile,
                                                     a.draft_max_batch, a.draft_batch_wait_ms,
                                                     not a.no_draft_slot_cache, a.draft_slot_memory_mb)))


def cmd_control(a: argparse.Namespace) -> None:
    from nodes.jetstream import StreamLimits
    from pipeline.serve import serve_control

    stream = StreamLimits(a.stream_max_msgs, a.stream_max_bytes, a.stream_max_age)
    aio.run(serve_control(default_nats_url(a.nats), a.id, a.log_file, a.max_length, a.seed, stream,
                          a.max_learners))


def _run_config(a: argparse.Namespace):
    from control import make_policy
    from nodes.link import parse_channel
    from pipeline.orchestrate import RunConfig

    make_policy(a.policy, max_length=a.max_length)
    parse_channel(a.channel)
    return RunConfig(requests=a.requests, concurrency=a.concurrency, max_new_tokens=a.max_new_tokens,
                     channel=a.channel, policy=a.policy, seed=a.seed, temperature=a.temperature,
                     max_length=a.max_length, run_root=a.run_root, draft=getattr(a, "draft", None),
                     target=getattr(a, "target", None), local_policy=getattr(a, "local_policy", True),
                     edge_device=_device_half(getattr(a, "edge_device", None), "draft"),
                     cloud_device=_device_half(getattr(a, "cloud_device", None), "verify"))


def _progress(enabled: bool):
    if not enabled:
        return None, None
    from rich.progress import Progress

    bar = Progress(transient=True, console=None)
    task = bar.add_task("requests", total=None)
    return bar, (lambda res: bar.advance(task))


def cmd_demo(a: argparse.Namespace) -> None:
    from pipeline.orchestrate import demo, render_summary

    cfg = _run_config(a)
    bar, progress = _progress(not a.json and sys.stderr.isatty())
    if bar:
        with bar:
            summary = demo(cfg, progress)
    else:
        summary = demo(cfg)
    print(json.dumps(summary) if a.json else render_summary(summary))


def cmd_run(a: argparse.Namespace) -> None:
    from pipeline.orchestrate import drive, render_summary

    cfg = _run_config(a)
    summary = aio.run(drive(default_nats_url(a.nats), cfg, baseline=not a.no_baseline))
    print(json.dumps(summary) if a.json else render_summary(summary))


def cmd_analyze(a: argparse.Namespace) -> None:
    from pipeline.analysis import analyze_run, render

    res = analyze_run(a.run_dir)
    if a.plots:
        from pipeline.plots import plot_run

        res["plots"] = plot_run(a.run_dir, a.plots)
    print(json.dumps(res) if a.json else render(res) + "".join(f"\nplot: {p}" for p in res.get("plots", [])))


def cmd_calibrate(a: argparse.Namespace) -> None:
    from pipeline.analysis import calibrate

    prof = calibrate(a.run_dir, a.out, a.max_length)
    if a.json:
        print(json.dumps(prof))
        return
    print(f"calibrated from {prof['rounds']} drafted rounds"
          + (" (device emulation on)" if prof["emulated"] else "") + (f"; written to {a.out}" if a.out else ""))
    for L, c in prof["round_compute_ms"].items():
        ci = prof["round_compute_ci_ms"].get(L)
        s = prof["survival"][int(L) - 1]
        sci = prof["survival_ci"][int(L) - 1]
        print(f"  L={L:>2}  C(L) {c:8.2f} ms {'' if ci is None else f'[{ci[0]:.2f}, {ci[1]:.2f}]':>20}"
              f"  n={prof['rounds_per_length'][L]:<5}  S({L}) {s:.3f} "
              f"{'' if sci[0] is None else f'[{sci[0]:.3f}, {sci[1]:.3f}]'}")
    ex = prof["extrapolated"]
    if ex["lengths"] or ex["positions"]:
        print(f"  extrapolated: lengths {ex['lengths']}, positions {ex['positions']}")


def cmd_experiment(a: argparse.Namespace) -> None:
    from pathlib import Path

    from pipeline.experiments.lab import LabConfig

    cfg = LabConfig(Path(a.out), quick=a.quick, edge_device=_device_half(a.edge_device, "draft"),
                    cloud_device=_device_half(a.cloud_device, "verify"), concurrency=a.concurrency,
                    max_new_tokens=a.max_new_tokens, seed=a.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    bar, progress = _progress(not a.json and sys.stderr.isatty())
    t0 = time.perf_counter()
    if bar:
        bar.start()
    try:
        if a.which == "phase":
            from pipeline.experiments.phase import phase

            res = phase(cfg, progress)
        else:
            from pipeline.experiments.compare import run_experiment

            res = run_experiment(a.which, cfg, progress)
    finally:
        if bar:
            bar.stop()
    if a.json:
        print(json.dumps(res))
    else:
        from pipeline.experiments.report import report

        path = report(cfg.out)
        print(f"{a.which}: done in {time.perf_counter() - t0:.0f} s; results in {cfg.out / (a.which + '.json')}, "
              f"page {path}")


def cmd_report(a: argparse.Namespace) -> None:
    from pipeline.experiments.report import report

    print(report(a.dir))


def register(sub) -> None:
    from pipeline.cli import _model_args, _non_negative_float, _non_negative_int, _positive_float, _positive_int

    def _nice(text: str) -> int:
        value = _non_negative_float(text)
        if value != int(value) or value > 19:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 0 to 19")
        return int(value)

    def nats_arg(p):
        p.add_argument("--nats", help="broker URL (default: $SPECSTOP_NATS_URL or nats://127.0.0.1:4222)")

    def node_id(text: str) -> str:
        from schemas.messages import valid_id

        if not valid_id(text):
            raise argparse.ArgumentTypeError(f"'{text}' must be 1..128 ASCII letters, digits, '-' or '_'")
        return text

    def node_args(p, default_id):
        nats_arg(p)
        p.add_argument("--id", type=node_id, default=default_id, help="node id (names its subjects and log)")
        p.add_argument("--log-file", help="JSON-lines log file (default: stderr)")
        p.add_argument("--max-length", type=_positive_int, default=8, help="longest draft accepted/produced")
        _model_args(p)
        p.add_argument("--model-nice", type=_nice, default=5,
                       help="lower the model thread's priority by this much (0-19) so the event loop stays prompt")
        p.add_argument("--drain-timeout", type=_positive_float, default=10.0,
                       help="seconds to finish work in hand after SIGTERM/SIGINT")
        p.add_argument("--emulate", metavar="DEVICE",
                       help="pad compute to a device profile's times (shipped: jetson-orin-nano, rtx-3090-ti, "
                            "as-is; or a JSON file)")
        p.set_defaults(threads=1)

    def workload_args(p):
        p.add_argument("--requests", type=_positive_int, default=32)
        p.add_argument("--concurrency", type=_positive_int, default=8)
        p.add_argument("--max-new-tokens", type=_positive_int, default=128)
        p.add_argument("--channel", default="markov:10,40,80:0.95", help="link emulation spec (see README)")
        p.add_argument("--policy", default="auto", help="policy spec, or target-only")
        p.add_argument("--max-length", type=_positive_int, default=8)
        p.add_argument("--temperature", type=_non_negative_float, default=0.0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--run-root", default="runs", help="parent folder of run directories")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    bench = sub.add_parser("bench", help="benchmarks (print JSON)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("engine", help="round compute vs context, tokens/s vs target-only and HF assisted")
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--profile-out", help="also write the measured cost/acceptance profile here")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_bench_engine)
    p = bsub.add_parser("pipeline", help="round overhead, tokens/s at 1-64 streams (0 and 20 ms), batch sizes, "
                                         "50 ms comparison")
    p.add_argument("--requests", type=_positive_int, default=32)
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_pipeline)
    p = bsub.add_parser("verify", help="verify step at batch 1/8/32: slot cache vs per-request, bookkeeping")
    p.add_argument("--batches", type=_batch_sizes, default=(1, 8, 32), help="comma-separated numbers of sessions")
    p.add_argument("--length", type=_positive_int, default=4, help="draft tokens per session")
    p.add_argument("--steps", type=_positive_int, default=10)
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_bench_verify, threads=1)
    p = bsub.add_parser("control", help="controller events/s, update lag, ms/token vs --local-policy")
    p.add_argument("--events", type=_positive_int, default=3000)
    p.add_argument("--lag-samples", type=_positive_int, default=200)
    p.add_argument("--requests", type=_positive_int, default=16)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_control)

    p = bsub.add_parser("analysis", help="specstop analyze on a synthetic log of a million round lines")
    p.add_argument("--rounds", type=_positive_int, default=1_000_000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_analysis)

    p = bsub.add_parser("policies", help="policies on generated profile families vs each scenario's oracle")
    p.add_argument("--policies", default="auto,ucb-specstop,ucb-specstop-scaled,naive-ucb,naive-ucb-scaled",
                   help="comma-separated policy specs (the UCB-SpecStop pair also runs at its best beta)")
    p.add_argument("--members", type=_positive_int, default=3, help="profiles per family")
    p.add_argument("--family-seed", type=int, default=0, help="seed that draws the family members")
    p.add_argument("--rounds", type=_positive_int, default=1000)
    p.add_argument("--seeds", type=_positive_int, default=20)
    p.add_argument("--workers", type=_positive_int, default=2, help="processes")
    p.add_argument("--no-tuned", action="store_true", help="skip the beta grid of the UCB baselines")
    p.add_argument("--quick", action="store_true", help="one profile per family, 5 seeds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_policies)

    p = sub.add_parser("broker", help="run an embedded nats-server (JetStream kept across restarts)")
    p.add_argument("--port", type=int, default=4222, help="port on 127.0.0.1 (-1 picks a free one)")
    p.add_argument("--run-root", default="runs", help="parent of the run directory (server log, ports file)")
    p.add_argument("--store-dir", help="JetStream store, kept across restarts (default: RUN_ROOT/jetstream)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("cloud", help="serve the target model: verify drafts")
    node_args(p, "cloud-1")
    p.add_argument("--max-sessions", type=_positive_int, default=128, help="sessions held at once (the cap)")
    p.add_argument("--session-ttl", type=_positive_float, default=120.0, help="seconds an idle session is kept")
    p.add_argument("--evict-idle", type=_positive_float, default=2.0,
                   help="at the cap, a session idle this many seconds may make room for a new one")
    p.add_argument("--max-context-tokens", type=_positive_int, default=8192,
                   help="tokens one session may hold (prompt + generated); larger contexts are refused")
    p.add_argument("--max-batch", type=_positive_int, default=32, help="rounds verified in one batched forward")
    p.add_argument("--batch-wait-ms", type=_non_negative_float, default=2.0,
                   help="the longest a round waits for others to join its batch (0: no waiting)")
    p.add_argument("--no-slot-cache", action="store_true",
                   help="verify every round on the per-request KV cache (no slots, no batched forward)")
    p.add_argument("--slot-memory-mb", type=_positive_int, default=2048,
                   help="K/V memory of the slot cache; sessions that do not fit run per request")
    p.set_defaults(func=cmd_cloud)

    p = sub.add_parser("edge", help="serve generate requests with the draft model")
    node_args(p, "edge-1")
    p.add_argument("--channel", default="const:0", help="link emulation spec (see README)")
    p.add_argument("--policy", default="auto", help="default policy spec for requests that name none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--remote-policy", action="store_true",
                   help="act on snapshots from `specstop control` instead of learning in-process")
    p.add_argument("--request-timeout", type=_positive_float, default=10.0,
                   help="seconds one attempt of a round waits for its verdict")
    p.add_argument("--failover-deadline", type=_positive_float, default=30.0,
                   help="seconds a round may wait for any verifier before the request fails")
    p.add_argument("--max-active", type=_positive_int, default=64, help="requests generating at once")
    p.add_argument("--max-queued", type=_non_negative_int, default=256,
                   help="requests waiting for a slot; beyond, requests are answered 'overloaded'")
    p.add_argument("--max-prompt-tokens", type=_positive_int, default=4096)
    p.add_argument("--max-new-tokens-limit", type=_positive_int, default=2048,
                   help="largest max_new_tokens a request may ask for")
    p.add_argument("--max-request-s", type=_positive_float, default=600.0,
                   help="no request runs longer (a request's own deadline may be shorter)")
    p.add_argument("--profile", help="control profile for oracle / static:D / head-rule policies "
                                     "(default: the bundled pair's; see `specstop calibrate`)")
    p.add_argument("--draft-max-batch", type=_positive_int, default=64, help="rounds drafted in one batch")
    p.add_argument("--draft-batch-wait-ms", type=_non_negative_float, default=2.0,
                   help="the longest a round waits for others to join its draft batch (0: no waiting)")
    p.add_argument("--no-draft-slot-cache", action="store_true",
                   help="draft every request on its own KV cache (no slots, no batched drafting)")
    p.add_argument("--draft-slot-memory-mb", type=_positive_int, default=1024,
                   help="K/V memory of the draft slot cache; requests that do not fit draft per request")
    p.set_defaults(func=cmd_edge)

    p = sub.add_parser("control", help="control subscriber: learn from timing events, publish policy updates")
    nats_arg(p)
    p.add_argument("--id", type=node_id, default="control-1")
    p.add_argument("--log-file", help="JSON-lines log file (default: stderr)")
    p.add_argument("--max-length", type=_positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-learners", type=_positive_int, default=1024,
                   help="learners kept in memory (least recently used ones wait in the bucket)")
    p.add_argument("--stream-max-msgs", type=_positive_int, default=1_000_000, help="timing stream: events kept")
    p.add_argument("--stream-max-bytes", type=_positive_int, default=512 * 1024 * 1024,
                   help="timing stream: bytes kept")
    p.add_argument("--stream-max-age", type=_positive_float, default=24 * 3600.0,
                   help="timing stream: seconds an event is kept")
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("demo", help="the main job: broker + cloud + edge + controller + streaming workload + summary")
    workload_args(p)
    p.add_argument("--edge-device", metavar="DEVICE", help="emulate this edge device (e.g. jetson-orin-nano)")
    p.add_argument("--cloud-device", metavar="DEVICE", help="emulate this cloud device (e.g. rtx-3090-ti)")
    p.add_argument("--local-policy", action="store_true",
                   help="learn inside the edge instead of starting the control subscriber")
    _model_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="drive a workload against running workers")
    workload_args(p)
    nats_arg(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the target-only baseline")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("analyze", help="what a run did, per policy x delay: ms/token with intervals, time split, regret")
    p.add_argument("run_dir")
    p.add_argument("--plots", help="write PNG plots to this folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("calibrate", help="fit the control profile (C(L), S(i) with intervals) from a run's logs")
    p.add_argument("run_dir")
    p.add_argument("-o", "--out", help="write the profile JSON here (usable by theory/simulate/oracle)")
    p.add_argument("--max-length", type=_positive_int, help="longest length in the profile (default: longest seen)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    register_chaos(sub)

    p = sub.add_parser("experiment", help="the paper's experiments on the live pipeline with device emulation")
    p.add_argument("which", choices=["phase", "compare", "regret", "markov", "drift"])
    p.add_argument("--out", required=True, help="folder for results (JSON), logs and the report")
    p.add_argument("--quick", action="store_true", help="fewer delays and requests (about 10 minutes)")
    p.add_argument("--edge-device", default="jetson-orin-nano", help="edge device profile to emulate")
    p.add_argument("--cloud-device", default="rtx-3090-ti", help="cloud device profile to emulate")
    p.add_argument("--concurrency", type=_positive_int, default=24, help="requests in flight (each its own device)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("report", help="a Markdown page (tables, plots) from the experiment results in DIR")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)


def cmd_chaos(a: argparse.Namespace) -> None:
    from pipeline.chaos.faults import ChaosConfig
    from pipeline.chaos.run import chaos, check_config, render

    faults = tuple(f.strip() for f in a.faults.split(",") if f.strip())
    cfg = ChaosConfig(faults=faults, requests=a.requests, concurrency=a.concurrency, max_new_tokens=a.max_new_tokens,
                      request_timeout_s=a.request_timeout, failover_deadline_s=a.failover_deadline, stall_s=a.stall_s,
                      fuzz_count=a.fuzz_count, seed=a.seed, run_root=a.run_root)
    check_config(cfg)  # before any model loads
    say = None if a.json else (lambda text: print(f"chaos: {text}", file=sys.stderr, flush=True))
    out = chaos(cfg, say)
    print(json.dumps(out) if a.json else render(out))
    if not out["ok"]:
        failed = [r["fault"] for r in out["faults"] if not r["ok"]]
        print(f"specstop: chaos: {len(failed)} fault(s) failed their checks: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def register_chaos(sub) -> None:
    from pipeline.chaos.faults import ChaosConfig
    from pipeline.cli import _non_negative_int, _positive_float, _positive_int

    d = ChaosConfig()
    p = sub.add_parser("chaos", help="fault run on loopback: every fault checked against target-only outputs")
    p.add_argument("--faults", default=",".join(d.faults), help="comma-separated (default: all)")
    p.add_argument("--requests", type=_positive_int, default=d.requests, help="at least this many requests per fault")
    p.add_argument("--concurrency", type=_positive_int, default=d.concurrency)
    p.add_argument("--max-new-tokens", type=_positive_int, default=d.max_new_tokens)
    p.add_argument("--request-timeout", type=_positive_float, default=d.request_timeout_s,
                   help="the edges' wait for one attempt's verdict")
    p.add_argument("--failover-deadline", type=_positive_float, default=d.failover_deadline_s,
                   help="the edges' wait for any verifier")
    p.add_argument("--stall-s", type=_positive_float, default=d.stall_s, help="how long the verifier is stopped")
    p.add_argument("--fuzz-count", type=_non_negative_int, default=d.fuzz_count, help="fuzzed messages per subject")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_chaos)
