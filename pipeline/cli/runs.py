"""Running and reading runs: the demo, a workload against running workers, analysis, calibration, experiments."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from control import make_policy
from nodes.link import parse_channel
from nodes.protocol.tree_shape import parse_tree
from pipeline.cli.args import (AHEAD_HELP, TREE_HELP, device_profile, model_args, nats_arg, positive_int, progress, rounds_in_flight,
                               workload_args)
from pipeline.errors import PipelineError
from pipeline.transport import aio
from pipeline.transport.broker import default_nats_url

def _run_config(a: argparse.Namespace):
    from pipeline.orchestration.local import RunConfig

    make_policy(a.policy, max_length=a.max_length)
    channel = getattr(a, "channel", None)  # demo only: `run` drives edges that run their own links
    if channel:
        parse_channel(channel)
    return RunConfig(requests=a.requests, concurrency=a.concurrency, max_new_tokens=a.max_new_tokens,
                     channel=channel or "", policy=a.policy, seed=a.seed, temperature=a.temperature,
                     max_length=a.max_length, run_root=getattr(a, "run_root", "runs"), draft=getattr(a, "draft", None),
                     target=getattr(a, "target", None), local_policy=getattr(a, "local_policy", True),
                     edge_device=device_profile(getattr(a, "edge_device", None), "draft"),
                     cloud_device=device_profile(getattr(a, "cloud_device", None), "verify"),
                     node_flags={kind: flags for kind in ("cloud", "edge") if (flags := _model_flags(a) + _tree_flags(a, kind))})


def _tree_flags(a: argparse.Namespace, kind: str) -> list[str]:
    """demo: the edge it starts drafts trees of this shape, or rounds ahead (checked here, before
    anything starts)."""
    tree, ahead = getattr(a, "tree", None), getattr(a, "ahead", 1)
    if kind != "edge":
        return []
    flags = ["--ahead", str(ahead)] if ahead > 1 else []
    if tree in (None, "off"):
        return flags
    parse_tree(tree)
    return ["--tree", tree, *flags]


def _model_flags(a: argparse.Namespace) -> list[str]:
    """demo: the workers it starts load their models on this device, in this dtype."""
    device, dtype = getattr(a, "device", "cpu"), getattr(a, "dtype", None)
    return [*(["--device", device] if device != "cpu" else []), *(["--dtype", dtype] if dtype else [])]


def cmd_demo(a: argparse.Namespace) -> None:
    from pipeline.orchestration.local import demo

    cfg = _run_config(a)
    say = None if a.json else (lambda text: print(f"demo: {text}", file=sys.stderr, flush=True))
    bar, advance = progress(not a.json)
    if bar:
        with bar:
            summary = demo(cfg, advance, say)
    else:
        summary = demo(cfg, None, say)
    _report_workload(summary, a.json)


def cmd_run(a: argparse.Namespace) -> None:
    from pipeline.orchestration.local import drive

    cfg = _run_config(a)
    baseline = not a.no_baseline and cfg.policy != "target-only"
    bar, advance = progress(not a.json, "requests", cfg.requests + (cfg.baseline_requests if baseline else 0))
    if bar:
        with bar:
            summary = aio.run(drive(default_nats_url(a.nats), cfg, baseline=not a.no_baseline, progress=advance))
    else:
        summary = aio.run(drive(default_nats_url(a.nats), cfg, baseline=not a.no_baseline))
    _report_workload(summary, a.json)


def _report_workload(summary: dict, as_json: bool) -> None:
    """The summary on stdout; when requests failed, one line naming why and a non-zero exit status
    (2 when nothing completed, 1 when some requests did)."""
    from pipeline.orchestration.local import render_summary, workload_failure

    failure = workload_failure(summary)
    if failure and not summary["completed"]:
        if as_json:
            print(json.dumps(summary))
        raise PipelineError(failure)
    print(json.dumps(summary) if as_json else render_summary(summary))
    if failure:
        print(f"specstop: error: {failure}", file=sys.stderr)
        sys.exit(1)


def cmd_analyze(a: argparse.Namespace) -> None:
    from pipeline.analysis import analyze_run, render

    res = analyze_run(a.run_dir)
    if a.plots:
        from pipeline.analysis.plots import plot_run

        res["plots"] = plot_run(a.run_dir, a.plots, res)
    print(json.dumps(res) if a.json else render(res) + "".join(f"\nplot: {p}" for p in res.get("plots", [])))


def cmd_calibrate(a: argparse.Namespace) -> None:
    from pipeline.analysis import calibrate

    prof = calibrate(a.run_dir, a.out, a.max_length)
    if a.json:
        print(json.dumps(prof))
        return
    print(f"calibrated from {prof['rounds']} drafted rounds"
          + (" (device emulation on)" if prof["emulated"] else "") + (f"; written to {a.out}" if a.out else ""))
    for w in prof["warnings"]:
        print(f"  warning: {w}")
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


# compare runs ~40 cells (policy x delay) side by side: 40 in flight keep about one request per learner,
# as 24 did for fewer prompts, and still leave the 2 cores ~25 % idle so the emulated times hold
EXPERIMENT_CONCURRENCY = {"compare": 40}


REFUSED_EXIT = 3  # an experiment that ran but whose numbers cannot be trusted (see pipeline/experiments/refusals.py)


def tree_shapes(text: str | None) -> tuple[str, ...] | None:
    """`--trees`: None (the experiment's default set), () for 'off', else the shapes, each checked as `--tree`."""
    if text is None:
        return None
    shapes = tuple(s.strip() for s in text.split(",") if s.strip())
    if shapes in ((), ("off",)):
        return ()
    for s in shapes:
        if parse_tree(s) is None:
            raise PipelineError(f"--trees: {s!r} is not a tree shape (auto or DEPTHxWIDTH)")
    return shapes


def stream_widths(text: str | None, which: str, flag: str = "--stream") -> tuple[int | str, ...]:
    """`--stream` (`--stream-fill`): () when absent, else the widths (each 1..the stream tree's child bound,
    or `auto`: the width learned per request, `edge --stream-width auto`), compare only."""
    from nodes.protocol.stream_tree import Limits

    if text is None:
        return ()
    if which != "compare":
        raise PipelineError(f"{flag}: only `experiment compare` runs the stream tree, not {which}")
    items = [x.strip().lower() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x != "auto" and not x.lstrip("-").isdigit()]
    if bad:
        raise PipelineError(f"{flag}: {bad[0]!r} in {text!r} is not a width: a comma-separated list of widths "
                            "(or auto)")
    widths = tuple(x if x == "auto" else int(x) for x in items)
    top = Limits().max_width
    if not widths or not all(w == "auto" or 1 <= w <= top for w in widths):
        raise PipelineError(f"{flag}: {text!r} must list stream-tree widths in 1..{top} (or auto)")
    if len(set(widths)) != len(widths):
        raise PipelineError(f"{flag}: {text!r} lists a width twice")
    return widths


def cmd_experiment(a: argparse.Namespace) -> None:
    from pipeline.experiments.lab import LabConfig

    cfg = LabConfig(Path(a.out), quick=a.quick, edge_device=device_profile(a.edge_device, "draft"),
                    cloud_device=device_profile(a.cloud_device, "verify"),
                    concurrency=a.concurrency or EXPERIMENT_CONCURRENCY.get(a.which, 24),
                    max_new_tokens=a.max_new_tokens, seed=a.seed, trees=tree_shapes(a.trees),
                    stream=stream_widths(a.stream, a.which),
                    stream_fill=stream_widths(a.stream_fill, a.which, "--stream-fill"))
    cfg.out.mkdir(parents=True, exist_ok=True)
    bar, advance = progress(not a.json)
    t0 = time.perf_counter()
    if bar:
        bar.start()
    try:
        if a.which == "phase":
            from pipeline.experiments.phase import phase

            res = phase(cfg, advance)
        else:
            from pipeline.experiments.compare import run_experiment

            res = run_experiment(a.which, cfg, advance)
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
    if res.get("refused"):  # the numbers are saved and shown, but they are not a result
        print(f"specstop: {a.which}: refused: " + "; ".join(f"{r['check']}: {r['why']}" for r in res["refused"]),
              file=sys.stderr)
        raise SystemExit(REFUSED_EXIT)


def cmd_report(a: argparse.Namespace) -> None:
    from pipeline.experiments.report import report

    print(report(a.dir))


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: broker + cloud + edge + controller + streaming workload + summary")
    workload_args(p, local=True)
    p.add_argument("--edge-device", metavar="DEVICE", help="emulate this edge device (e.g. jetson-orin-nano)")
    p.add_argument("--cloud-device", metavar="DEVICE", help="emulate this cloud device (e.g. rtx-3090-ti)")
    p.add_argument("--local-policy", action="store_true",
                   help="learn inside the edge instead of starting the control subscriber")
    p.add_argument("--tree", default="off", help=TREE_HELP)
    p.add_argument("--ahead", type=rounds_in_flight, default=1, help=AHEAD_HELP)
    model_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="drive a workload against running workers")
    workload_args(p, local=False)
    nats_arg(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the target-only baseline")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("analyze", help="what a run did, per policy x delay: ms/token with intervals, time split, regret")
    p.add_argument("run_dir", help="a run's directory (its logs)")
    p.add_argument("--plots", help="write PNG plots to this folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("calibrate", help="fit the control profile (C(L), S(i) with intervals) from a run's logs")
    p.add_argument("run_dir", help="a run's directory (its logs)")
    p.add_argument("-o", "--out", help="write the profile JSON here (usable by theory/simulate/oracle)")
    p.add_argument("--max-length", type=positive_int, help="longest length in the profile (default: longest seen)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("experiment", help="the paper's experiments on the live pipeline with device emulation")
    p.add_argument("which", choices=["phase", "compare", "regret", "markov", "drift"], help="which experiment")
    p.add_argument("--out", required=True, help="folder for results (JSON), logs and the report")
    p.add_argument("--quick", action="store_true", help="fewer delays and requests (about 10 minutes)")
    p.add_argument("--edge-device", default="jetson-orin-nano", help="edge device profile to emulate")
    p.add_argument("--cloud-device", default="rtx-3090-ti", help="cloud device profile to emulate")
    p.add_argument("--concurrency", type=positive_int,
                   help="requests in flight, each its own device (default: 40 for compare, 24 for the others)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trees", help="compare: draft-tree shapes run beside the chains, comma-separated `--tree` "
                                   "values (default auto,2x2,4x2,8x3), or 'off'")
    p.add_argument("--stream", metavar="W,W,...",
                   help="compare: also the stream tree (edge --stream-tree) of each width, on the same prompts, seeds "
                        "and devices, against the best fixed chain in hindsight, auto and the cloud streaming; "
                        "`auto` is the width learned per request, also against the best fixed width in hindsight")
    p.add_argument("--stream-fill", metavar="W,W,...",
                   help="compare: the stream tree of each width once more, its cloud filling its idle time "
                        "(cloud --stream-fill: the cloud generating what the edge has not offered; exact, one "
                        "target forward per filled token), reported and checked apart from speculation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("report", help="a Markdown page (tables, plots) from the experiment results in DIR")
    p.add_argument("dir", help="directory holding `specstop experiment` results")
    p.set_defaults(func=cmd_report)
