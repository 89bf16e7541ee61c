"""Latency analysis from the structured round logs (and from timing events).

Reads JSON lines back with json.loads; a line that is not a JSON object is
counted and skipped, never guessed at. ms/token is always a ratio of sums
(total round time / total tokens), as in the theory.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from pipeline.errors import PipelineError


def read_events(path: str | Path) -> tuple[list[dict], int]:
    """(events, bad_lines) of one JSON-lines log file."""
    events, bad = [], 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(obj, dict):
                    events.append(obj)
                else:
                    bad += 1
    except OSError as exc:
        raise PipelineError(f"cannot read log '{path}' ({exc.strerror})") from None
    return events, bad


def run_events(run_dir: str | Path) -> dict[str, list[dict]]:
    d = Path(run_dir)
    if not d.is_dir():
        raise PipelineError(f"run directory '{run_dir}' does not exist")
    return {p.stem: read_events(p)[0] for p in sorted(d.glob("*.jsonl"))}


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _p(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def summarize_rounds(rounds: list[dict]) -> dict:
    """Summary of edge `round` events (or dicts with the same fields)."""
    spec = [r for r in rounds if r.get("draft_length", 0) > 0]
    tokens = sum(r.get("tokens", r.get("accepted", 0) + 1) for r in rounds)
    total_ms = sum(r["round_ms"] for r in rounds)
    lengths = Counter(r["draft_length"] for r in spec)
    accepted = sum(r["accepted"] for r in spec)
    drafted = sum(r["draft_length"] for r in spec)
    overhead = [r["network_ms"] - 2 * r.get("delay_ms", 0.0) for r in rounds]
    link_error = [r["link_ms"] - 2 * r["delay_ms"] for r in rounds if r.get("delay_ms", 0) > 0 and "link_ms" in r]
    return {
        "rounds": len(rounds),
        "tokens": tokens,
        "ms_per_token": round(total_ms / tokens, 3) if tokens else None,
        "tokens_per_round": round(tokens / len(rounds), 3) if rounds else None,
        "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
        "lengths_chosen": {str(k): v for k, v in sorted(lengths.items())},
        "median_round_ms": _median([r["round_ms"] for r in rounds]),
        "median_draft_ms": _median([r["draft_ms"] for r in rounds]),
        "median_verify_ms": _median([r["verify_ms"] for r in rounds]),
        "median_queue_ms": _median([r["queue_ms"] for r in rounds]),
        "median_network_ms": _median([r["network_ms"] for r in rounds]),
        "median_overhead_ms": _median(overhead),
        "cloud_verify_ms_per_token": round(sum(r["verify_ms"] for r in rounds) / tokens, 3) if tokens else None,
        "mean_one_way_delay_ms": round(statistics.fmean(r.get("delay_ms", 0.0) for r in rounds), 3) if rounds else None,
        "channel_states": dict(Counter(str(r.get("channel_state")) for r in rounds)),
        "rejections": sum(1 for r in spec if r["accepted"] < r["draft_length"]),
        "full_accepts": sum(1 for r in spec if r["accepted"] == r["draft_length"]),
        "context_resends": sum(1 for r in rounds if r.get("context_resent") and r["round"] > 0),
        "median_link_error_ms": _median(link_error),      # emulated link time slept - 2 x delay
        "p90_abs_link_error_ms": _p([abs(e) for e in link_error], 0.9),
        "stall_ms": round(sum(r.get("stall_ms", 0.0) for r in rounds), 3),  # lost to retries and failover
    }


def analyze_run(run_dir: str | Path) -> dict:
    """`specstop analyze RUN_DIR`: per-policy round summaries from every edge log."""
    by_node = run_events(run_dir)
    rounds = [e for evs in by_node.values() for e in evs if e.get("event") == "round"]
    if not rounds:
        raise PipelineError(f"no round events in {run_dir} (expected edge logs *.jsonl)")
    policies = sorted({r.get("policy", "?") for r in rounds})
    out = {"run_dir": str(run_dir), "nodes": sorted(by_node), "policies": {}}
    for p in policies:
        out["policies"][p] = summarize_rounds([r for r in rounds if r.get("policy") == p])
    verifies = [e for evs in by_node.values() for e in evs if e.get("event") == "verify"]
    out["cloud"] = {"rounds": len(verifies), "median_verify_ms": _median([v["verify_ms"] for v in verifies]),
                    "p95_queue_ms": _p([v["queue_ms"] for v in verifies], 0.95),
                    "verifiers": dict(Counter(v.get("verifier_id") for v in verifies))}
    return out
