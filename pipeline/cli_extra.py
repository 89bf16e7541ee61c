"""Commands that run workers, the broker and benchmarks (registered onto the main parser)."""
from __future__ import annotations

import argparse
import json


def cmd_bench_engine(a: argparse.Namespace) -> None:
    from pipeline.bench_engine import bench_engine

    res = bench_engine(draft=a.draft, target=a.target, threads=a.threads, repeats=a.repeats,
                       max_new_tokens=a.max_new_tokens, profile_out=a.profile_out)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


def register(sub) -> None:
    from pipeline.cli import _model_args, _positive_int

    bench = sub.add_parser("bench", help="benchmarks (print JSON)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("engine", help="round compute vs context, tokens/s vs target-only and HF assisted")
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--profile-out", help="also write the measured cost/acceptance profile here")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_bench_engine)
