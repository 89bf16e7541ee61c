"""`specstop bench ...`: every benchmark prints numbers (JSON with --json); none is a timed test."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from control.evaluation import KINDS, evaluate, kind_profiles
from control.types import ControlError
from pipeline.cli.args import (batch_sizes, delays, emit, model_args, non_negative_float,
                               non_negative_int, positive_float, positive_int, progress, shape_calibration_args)
from pipeline.errors import PipelineError


def ahead_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated rounds in flight, each 2..MAX_ROUNDS_IN_FLIGHT."""
    from nodes.config import MAX_ROUNDS_IN_FLIGHT

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or not all(2 <= v <= MAX_ROUNDS_IN_FLIGHT for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' must list rounds in flight in 2..{MAX_ROUNDS_IN_FLIGHT}")
    return values


def tree_shapes(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated DEPTHxWIDTH shapes."""
    from control import ControlError
    from nodes.protocol.tree_shape import parse_tree

    shapes = tuple(x.strip() for x in text.split(",") if x.strip())
    try:
        if not shapes or any(parse_tree(x) in (None, "auto") for x in shapes):
            raise ControlError(f"'{text}' must list DEPTHxWIDTH shapes")
    except ControlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return shapes


def node_counts(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated tree sizes >= 1."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must list tree sizes >= 1")
    return sizes


def cmd_bench_shapes(a: argparse.Namespace) -> None:
    from control.shape_choice import candidates, choose
    from pipeline.cli.args import shape_calibration

    cal = shape_calibration(a)
    shapes = candidates(cal, max_nodes=a.max_nodes, max_rounds=a.max_rounds)
    res = {"table": a.table or "bundled", "compute": a.compute, "margin": a.margin, "cost": cal.cost.__dict__,
           "stream_tree": None if cal.stream is None else cal.stream.__dict__, "candidates": len(shapes),
           "rows": [choose(cal, d, shapes, a.margin).row() for d in a.delays]}

    def render(r: dict) -> str:
        fams = [f for f in ("chain", "tree", "chain-ahead", "tree-ahead", "stream-tree") if f in r["rows"][0]["families"]]
        lines = [f"shapes on {r['table']} ({r['compute']} compute, margin {r['margin']:g}): modelled ms/token",
                 f"{'delay':>6} {'pick':>20} {'ms/tok':>7} " + " ".join(f"{f:>20}" for f in fams)]
        for row in r["rows"]:
            cells = " ".join(f"{row['families'][f]['shape'] + ' ' + format(row['families'][f]['ms_per_token'], '.2f'):>20}"
                             for f in fams)
            lines.append(f"{row['delay_ms']:>6g} {row['pick']:>20} {row['ms_per_token']:>7.2f} {cells}")
        return "\n".join(lines)

    emit(res, a.json, render)


def cmd_bench_engine(a: argparse.Namespace) -> None:
    from pipeline.bench.engine import bench_engine

    res = bench_engine(draft=a.draft, target=a.target, threads=a.threads, repeats=a.repeats,
                       max_new_tokens=a.max_new_tokens, profile_out=a.profile_out,
                       device=a.device, dtype=a.dtype)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def check_stream_rows(a: argparse.Namespace) -> None:
    """The stream rows' shapes, refused in one line before any row runs (a bad one would otherwise
    fail only when its row's edge starts, after the rows before it)."""
    from pipeline.cli.workers import MAX_STREAM_BATCH

    from nodes.protocol.stream_tree import Limits

    top = Limits().max_width
    for w in (*a.stream, *a.stream_auto, *a.stream_fill):
        if not 1 <= w <= top:
            raise PipelineError(f"bench trees: stream width must be 1..{top} (children per node), got {w}")
    if a.stream_batch is not None:
        if not (a.stream or a.stream_auto or a.stream_fill or a.stream_width_auto):
            raise PipelineError("bench trees: --stream-batch is the stream rows' batch: add --stream, --stream-auto, "
                                "--stream-fill or --stream-width-auto")
        if not 1 <= a.stream_batch <= MAX_STREAM_BATCH:
            raise PipelineError(f"bench trees: --stream-batch must be 1..{MAX_STREAM_BATCH}, got {a.stream_batch}")


def cmd_bench_trees(a: argparse.Namespace) -> None:
    if not a.live and (a.edge_device or a.cloud_device or a.chain_lengths or a.stream_width_auto):
        raise PipelineError("bench trees: --edge-device, --cloud-device, --chain-lengths and --stream-width-auto "
                            "need --live")
    check_stream_rows(a)
    if a.live:
        from pipeline.bench.trees_live import bench_trees_live
        from pipeline.cli.args import device_profile
        from pipeline.cli.runs import REFUSED_EXIT

        edge, cloud = device_profile(a.edge_device, "draft"), device_profile(a.cloud_device, "verify")
        res = bench_trees_live(a.delay_ms, a.requests, a.max_new_tokens, a.run_root, a.draft, a.target,
                               tuple(a.ahead), tuple(a.ahead_lengths), not a.no_trees, a.live_repeats,
                               tuple(a.ahead_trees), tuple(a.stream), tuple(a.stream_auto), edge, cloud,
                               tuple(a.chain_lengths), a.stream_batch, tuple(a.stream_fill),
                               a.stream_width_auto)
        print(json.dumps(res) if a.json else json.dumps(res, indent=2))
        if res.get("refused"):  # the numbers are printed, but they are not a result
            print("specstop: bench trees --live: refused: " + "; ".join(f"{r['check']}: {r['why']}"
                                                                        for r in res["refused"]), file=sys.stderr)
            raise SystemExit(REFUSED_EXIT)
        return
    from pipeline.bench.trees import bench_trees

    if (a.table_out or a.online_rounds) and not a.optimal_nodes:
        raise ControlError("bench trees: --table-out and --online-rounds need --optimal-nodes (the table and the "
                           "shapes they are compared with come from it)")

    res = bench_trees(draft=a.draft, target=a.target, threads=a.threads, repeats=a.repeats,
                      max_new_tokens=a.max_new_tokens, depths=range(1, a.max_depth + 1),
                      widths=range(1, a.max_width + 1), device=a.device, dtype=a.dtype,
                      delays_ms=tuple(a.delays), optimal_nodes=tuple(a.optimal_nodes or ()),
                      online_rounds=a.online_rounds)
    if a.table_out:
        with open(a.table_out, "w") as f:
            json.dump({"accept": res["optimal"]["table"], "cost": res["optimal"]["cost"],
                       "pair": res["pair"]}, f, indent=1)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_pipeline(a: argparse.Namespace) -> None:
    from pipeline.bench.pipeline import bench_pipeline

    res = bench_pipeline(run_root=a.run_root, requests=a.requests, max_new_tokens=a.max_new_tokens, only=a.only)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_verify(a: argparse.Namespace) -> None:
    from pipeline.bench.verify import bench_verify, bench_verify_shape

    if a.shape:
        res = bench_verify_shape(a.shape, device=a.device, dtype=a.dtype, layers=a.layers, threads=a.threads,
                                 batches=a.batches or (1, 8, 32, 64), length=a.length, steps=a.steps,
                                 bandwidth=a.bandwidth)
        if a.flips:
            import random

            from pipeline.bench.verify import _contexts, shape_pair, verdict_flips

            rng = random.Random(1)
            pair = shape_pair(a.shape, a.device, a.dtype, a.layers)
            res["flips"] = verdict_flips(pair, _contexts(pair, 16, 100, 400, rng), a.length, 4, rng,
                                         max_bytes=(48 << 30) if a.device.startswith("cuda") else (2 << 30))
    else:
        res = bench_verify(draft=a.draft, target=a.target, device=a.device, threads=a.threads,
                           batches=a.batches or (1, 8, 32), length=a.length, steps=a.steps, dtype=a.dtype)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_control(a: argparse.Namespace) -> None:
    from pipeline.bench.control import bench_control

    res = bench_control(run_root=a.run_root, events=a.events, lag_samples=a.lag_samples, requests=a.requests)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_http(a: argparse.Namespace) -> None:
    from pipeline.bench.http import bench_http

    res = bench_http(run_root=a.run_root, requests=a.requests, max_new_tokens=a.max_new_tokens, policy=a.policy,
                     channel=a.channel)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_liveness(a: argparse.Namespace) -> None:
    from pipeline.bench.liveness import main as liveness
    from pipeline.transport import aio

    res = aio.run(liveness(a.scenarios))
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_analysis(a: argparse.Namespace) -> None:
    from pipeline.bench.analysis import bench_analysis

    res = bench_analysis(a.rounds)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def cmd_bench_policies(a: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    kinds = list(KINDS) if a.kinds == "all" else [k.strip() for k in a.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise PipelineError(f"--kinds: unknown kind {', '.join(unknown) or '(none)'} (known: {', '.join(KINDS)}, all)")
    members, seeds = (1, 5) if a.quick else (a.members, a.seeds)
    bar, advance = progress(not a.json, "profiles", sum(len(kind_profiles(k, members, a.family_seed)) for k in kinds))
    with bar or contextlib.nullcontext():
        res = evaluate(None, policies=policies, rounds=a.rounds, seeds=seeds, workers=a.workers,
                       tuned=not a.no_tuned, kinds=kinds, members=members, family_seed=a.family_seed,
                       progress=advance, calibration=a.calibrate)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res))
        return
    print(f"{res['profiles']} generated profiles, {res['rounds']} rounds, {res['seeds']} seeds"
          + (f", {res['calibration']} calibration rounds per length" if res["calibration"] else "") + "; "
          f"gaps in % over each scenario's oracle ({res['wall_s']} s)")
    for kind, summary in res["by_kind"].items():
        print(f"== {kind}" + (f" (scenarios: {res['scenarios']})" if kind == "families" else ""))
        for title, get in (("realized", lambda v: v), ("expected (the choices alone)", lambda v: v["expected"])):
            print(f"{title:<32} {'mean':>7} {'worst mean':>11} {'worst p90':>10} {'worst seed':>11} "
                  f"{'cells >1% mean':>15} {'>3% worst seed':>15} {'behind a rival':>15} {'clearly behind':>15}")
            behind = "cells_behind_a_rival" if title == "realized" else "expected_cells_behind_a_rival"
            clear = "cells_clearly_behind_a_rival" if title == "realized" else "expected_cells_clearly_behind_a_rival"
            for spec, v in summary.items():
                e = get(v)
                print(f"{spec:<32} {e['mean_gap_pct']:>7.2f} {e['worst_mean_gap_pct']:>11.2f} "
                      f"{e['worst_p90_pct']:>10.2f} {e['worst_seed_pct']:>11.2f} "
                      f"{e['cells_over_1pct_mean']:>9}/{v['cells']:<5} {e['cells_over_3pct_worst_seed']:>9}/{v['cells']:<5} "
                      f"{v[behind]:>9}/{v['cells']:<5} {'-' if v[clear] is None else v[clear]:>9}/{v['cells']:<5}")


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (print JSON)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("engine", help="round compute vs context, tokens/s vs target-only and HF assisted")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per point")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--profile-out", help="also write the measured cost/acceptance profile here")
    p.add_argument("--json", action="store_true")
    model_args(p)
    p.set_defaults(func=cmd_bench_engine)
    p = bsub.add_parser("trees", help="chain vs draft trees (depth x width): tokens per target forward, "
                        "ms/token modelled at each of --delays; --optimal-nodes adds Sequoia-optimal trees")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per shape (medians reported)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--max-depth", type=positive_int, default=8, help="deepest tree (and longest chain) measured")
    p.add_argument("--max-width", type=positive_int, default=3, help="most candidates per tree node measured")
    p.add_argument("--delays", type=delays, default=delays("0,50"), help="one-way delays (ms) to model ms/token at (default: 0,50)")
    p.add_argument("--optimal-nodes", type=node_counts, default=None, metavar="N,N,...",
                   help="also calibrate the pair's depth x rank acceptance and run the Sequoia-optimal tree "
                        "of each size (e.g. 8,16,32,64,128)")
    p.add_argument("--online-rounds", type=non_negative_int, default=0,
                   help="with --optimal-nodes: per delay, this many real rounds whose shape the online learner "
                        "(control/tree_shape.py) chooses from no profile, then its final shape measured")
    p.add_argument("--table-out", help="with --optimal-nodes: write the measured acceptance table and round "
                                       "cost here (input of `specstop simulate --trees`)")
    p.add_argument("--live", action="store_true",
                   help="instead: the best chain and tree shapes through the real pipeline (broker, cloud and edge "
                        "processes) at --delay-ms one-way, ms/token from the edge's round logs")
    p.add_argument("--delay-ms", type=non_negative_float, default=50.0, help="--live: emulated one-way delay")
    p.add_argument("--requests", type=positive_int, default=6, help="--live: greedy requests per row, one at a time")
    p.add_argument("--run-root", default="runs", help="--live: parent of the rows' run directories")
    p.add_argument("--ahead", type=ahead_list, default=(), metavar="R,R,...",
                   help="--live: also chains with R rounds in flight (edge --ahead R), one row per R and length")
    p.add_argument("--ahead-lengths", type=node_counts, default=(2, 4), metavar="L,L,...",
                   help="--live --ahead: the chain lengths (fixed:L) drafted ahead")
    p.add_argument("--ahead-trees", type=tree_shapes, default=(), metavar="DxW,DxW,...",
                   help="--live --ahead: also these tree shapes drafted ahead (edge --tree DxW --ahead R)")
    p.add_argument("--no-trees", action="store_true", help="--live: no one-round-per-trip tree rows")
    p.add_argument("--stream", type=node_counts, default=(), metavar="W,W,...",
                   help="--live: also the stream tree (edge --stream-tree) of each width, interleaved with the rows")
    p.add_argument("--stream-auto", type=node_counts, default=(), metavar="W,W,...",
                   help="--live: also `edge --stream-tree auto` of each width (the stream tree or rounds per request)")
    p.add_argument("--stream-fill", type=node_counts, default=(), metavar="W,W,...",
                   help="--live: also the stream tree of each width with `cloud --stream-fill` (the cloud decides "
                        "positions itself while idle; reported apart from speculation)")
    p.add_argument("--stream-width-auto", action="store_true",
                   help="--live: also the stream tree with its width learned per request (edge --stream-width auto)")
    p.add_argument("--stream-batch", type=int, default=None, metavar="N",
                   help="--live: frontier nodes expanded per draft forward on every stream row (edge --stream-batch)")
    p.add_argument("--live-repeats", type=positive_int, default=1,
                   help="--live: run every row this many times, interleaved; each row reports its median run")
    p.add_argument("--chain-lengths", type=node_counts, default=(), metavar="L,L,...",
                   help="--live: also a chain row of each fixed length (the best fixed length in hindsight is "
                        "the stream tree's reference)")
    p.add_argument("--edge-device", metavar="DEVICE",
                   help="--live: emulate this edge device on every row (e.g. jetson-orin-nano; stream tree included)")
    p.add_argument("--cloud-device", metavar="DEVICE",
                   help="--live: emulate this cloud device on every row (e.g. rtx-3090-ti)")
    p.add_argument("--json", action="store_true")
    model_args(p)
    p.set_defaults(func=cmd_bench_trees)
    p = bsub.add_parser("shapes", help="the shape chooser (control/shape_choice.py): per delay, the pick among chains, "
                        "trees, rounds in flight and the stream tree by modelled ms/token, and each family's best")
    p.add_argument("--table", help="depth x rank acceptance and round cost from `bench trees --table-out` "
                                   "(default: the bundled pair's)")
    p.add_argument("--delays", type=delays, default=delays("0,2,5,10,20,50,100,200"), help="one-way delays (ms)")
    shape_calibration_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_shapes)
    p = bsub.add_parser("pipeline", help="round overhead, tokens/s at 1-64 streams (0 and 20 ms), batch sizes, "
                                         "50 ms comparison")
    p.add_argument("--requests", type=positive_int, default=32)
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--only", choices=("proactive",),
                   help="proactive: only the in-process row of rounds in flight vs the single chain at 50 and 0 ms "
                        "(no broker; about two minutes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_pipeline)
    p = bsub.add_parser("verify", help="verify step at batch 1/8/32: slot cache vs per-request, bookkeeping; "
                                       "--shape: a 7B-class target's step vs its bare and graph forward and floor")
    p.add_argument("--batches", type=batch_sizes, default=None,
                   help="comma-separated numbers of sessions (default: 1,8,32; with --shape 1,8,32,64)")
    p.add_argument("--shape", choices=("qwen2-7b", "llama3-8b", "tiny"),
                   help="a random-weight target of this shape (no hub) instead of --target")
    p.add_argument("--layers", type=positive_int, help="with --shape: this many layers (a quick run on a CPU)")
    p.add_argument("--bandwidth", type=positive_float, metavar="GB/S",
                   help="with --shape: the device's memory bandwidth for the floor (default: measured by a copy)")
    p.add_argument("--flips", action="store_true",
                   help="with --shape: count verdicts that differ between eager batched, static, batch-invariant "
                        "and per-request verification of the same drafts")
    p.add_argument("--length", type=positive_int, default=4, help="draft tokens per session")
    p.add_argument("--steps", type=positive_int, default=10, help="verify steps timed per batch size")
    p.add_argument("--json", action="store_true")
    model_args(p)
    p.set_defaults(func=cmd_bench_verify, threads=1)
    p = bsub.add_parser("control", help="controller events/s, update lag, ms/token vs --local-policy")
    p.add_argument("--events", type=positive_int, default=3000, help="round events fed to the controller")
    p.add_argument("--lag-samples", type=positive_int, default=200, help="update-lag measurements")
    p.add_argument("--requests", type=positive_int, default=16)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_control)

    p = bsub.add_parser("http", help="time to first token and ms/token through the HTTP gateway vs the NATS client")
    p.add_argument("--requests", type=positive_int, default=30, help="requests per path (after 3 warm-up ones)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--policy", default="fixed:4")
    p.add_argument("--channel", default="const:0", help="the edge's link emulation")
    p.add_argument("--run-root", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_http)

    p = bsub.add_parser("liveness", help="how fast failures are noticed: an edge killed under 16 streams, one of "
                                         "two verifiers stopped for 20 s under 32 (real processes)")
    p.add_argument("scenarios", nargs="*", choices=["kill", "stall"], default=["kill", "stall"],
                   help="which to run (default: both)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_liveness)

    p = bsub.add_parser("analysis", help="specstop analyze on a synthetic log of a million round lines")
    p.add_argument("--rounds", type=positive_int, default=1_000_000, help="round lines in the synthetic log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_analysis)

    p = bsub.add_parser("policies", help="policies on generated profile families vs each scenario's oracle")
    p.add_argument("--policies", default="auto,ucb-specstop,ucb-specstop-scaled,naive-ucb,naive-ucb-scaled",
                   help="comma-separated policy specs (the UCB-SpecStop pair also runs at its best beta)")
    p.add_argument("--members", type=positive_int, default=3, help="profiles per family")
    p.add_argument("--family-seed", type=int, default=0, help="seed that draws the family members")
    p.add_argument("--rounds", type=positive_int, default=1000)
    p.add_argument("--seeds", type=positive_int, default=20)
    p.add_argument("--workers", type=positive_int, default=2, help="processes")
    p.add_argument("--no-tuned", action="store_true", help="skip the beta grid of the UCB baselines")
    p.add_argument("--kinds", default="all", help="comma-separated: families (the acceptance x compute shapes), "
                   "non-affine, jitter, streaky, short (issue 23's kinds), or all")
    p.add_argument("--quick", action="store_true", help="one profile per family, 5 seeds")
    p.add_argument("--calibrate", type=non_negative_int, default=0, metavar="M",
                   help="every policy first gets M start-up calibration rounds per length (edge --calibrate-rounds; "
                        "only auto uses them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_policies)
