"""`specstop chaos`: the fault run on loopback."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.chaos.faults import ChaosConfig
from pipeline.cli.args import non_negative_int, positive_float, positive_int

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


def register(sub) -> None:
    d = ChaosConfig()
    p = sub.add_parser("chaos", help="fault run on loopback: every fault checked against target-only outputs")
    p.add_argument("--faults", default=",".join(d.faults), help="comma-separated (default: all)")
    p.add_argument("--requests", type=positive_int, default=d.requests, help="at least this many requests per fault")
    p.add_argument("--concurrency", type=positive_int, default=d.concurrency)
    p.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens)
    p.add_argument("--request-timeout", type=positive_float, default=d.request_timeout_s,
                   help="the edges' wait for one attempt's verdict")
    p.add_argument("--failover-deadline", type=positive_float, default=d.failover_deadline_s,
                   help="the edges' wait for any verifier")
    p.add_argument("--stall-s", type=positive_float, default=d.stall_s, help="how long the verifier is stopped")
    p.add_argument("--fuzz-count", type=non_negative_int, default=d.fuzz_count, help="fuzzed messages per subject")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_chaos)
