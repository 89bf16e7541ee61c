"""`specstop analyze RUN_DIR`: what a run did, per policy x delay (x channel state), and why it was slow.

Per group: ms/token (ratio of sums) with a bootstrap interval over requests,
tokens per round, acceptance and its survival, where the round time went
(draft, verify, queues, emulated link, transport = network - link, time lost
to retries), the lengths chosen and how they moved over the run, and the
regret against the empirical oracle: the best fixed length at the group's
delay under the profile calibrated from this same run (compute does not depend
on the delay, so every round of the run informs it). Target-only rounds
(length 0) are their own policy, never mixed into another's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from control.profile import profile_from_dict
from control.theory import best_length
from pipeline.analysis.calibrate import calibrate_rounds
from pipeline.analysis.frames import load_run, rounds_frame
from pipeline.analysis.stats import delay_buckets, ratio_ci, survival
from pipeline.errors import PipelineError

SPLIT = ("draft_ms", "verify_ms", "queue_ms", "edge_queue_ms", "link_ms", "transport_ms", "stall_ms")


def _r(x, nd: int = 3):
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else round(float(x), nd)


def group_summary(g: pl.DataFrame, max_length: int, oracle: tuple[int, float] | None = None) -> dict:
    g = g.with_columns((pl.col("network_ms").fill_null(0) - pl.col("link_ms").fill_null(0)).alias("transport_ms"))
    point, lo, hi = ratio_ci(g)
    rounds, tokens = len(g), int(g["tokens"].sum())
    drafted = g.filter(pl.col("draft_length") > 0)
    lengths = drafted["draft_length"].value_counts().sort("draft_length")
    q = g.with_row_index("i").with_columns((pl.col("i") * 4 // max(rounds, 1)).alias("quarter"))
    by_quarter = (q.filter(pl.col("draft_length") > 0).group_by("quarter")
                  .agg(pl.col("draft_length").mode().first().alias("L"), pl.col("draft_length").mean().alias("mean"))
                  .sort("quarter"))
    total = float(g["round_ms"].sum()) + float(g["stall_ms"].fill_null(0).sum())
    split = {c: _r(float(g[c].fill_null(0).sum()) / rounds) for c in SPLIT}
    out = {
        "rounds": rounds, "requests": g["request_id"].n_unique(), "tokens": tokens,
        "ms_per_token": _r(point), "ms_per_token_ci": [_r(lo), _r(hi)],
        "tokens_per_round": _r(tokens / rounds) if rounds else None,
        "acceptance_rate": _r(drafted["accepted"].sum() / drafted["draft_length"].sum(), 4) if len(drafted) else None,
        "mean_draft_length": _r(drafted["draft_length"].mean()) if len(drafted) else 0.0,
        "lengths_chosen": {str(L): int(n) for L, n in lengths.iter_rows()},
        "lengths_by_quarter": [{"quarter": int(qq) + 1, "most_chosen": int(L), "mean": _r(m)}
                               for qq, L, m in by_quarter.iter_rows()],
        "survival": survival(drafted["draft_length"].to_numpy(), drafted["accepted"].to_numpy(), max_length)
        if len(drafted) else None,
        "mean_ms": split,
        "share_of_time": {c: _r(float(g[c].fill_null(0).sum()) / total, 4) if total else None for c in SPLIT},
        "round_ms_p50_p90_p99": [_r(x) for x in np.percentile(g["round_ms"].to_numpy(), [50, 90, 99])],
        "retried_rounds": int((g["stall_ms"].fill_null(0) > 0).sum()),
        "context_resends": int(g.filter((pl.col("round") > 0) & pl.col("context_resent").fill_null(False)).height),
    }
    if oracle is not None and point:
        out["empirical_oracle"] = {"length": oracle[0], "ms_per_token": _r(oracle[1]),
                                   "regret_pct": _r(100.0 * (point / oracle[1] - 1.0), 2)}
    return out


def analyze_frames(rounds: pl.DataFrame) -> dict:
    if rounds.is_empty():
        raise PipelineError("no round events in these logs (expected edge logs *.jsonl)")
    k = int(max(1, rounds["draft_length"].max()))
    profile = None
    try:
        profile = profile_from_dict(calibrate_rounds(rounds, k), "calibrated")
    except Exception:  # no drafted rounds (target-only only): no empirical oracle
        profile = None
    keyed = rounds.with_columns(delay_buckets(rounds["delay_ms"].fill_null(0.0)),
                                pl.col("channel_state").fill_null("-"))
    several_states = keyed["channel_state"].n_unique() > 1
    keys = ["policy", "delay", *(["channel_state"] if several_states else [])]
    groups = []
    for key, g in keyed.sort("ts", nulls_last=True).group_by(keys, maintain_order=True):
        delay = float(g["delay_ms"].fill_null(0.0).mean())
        oracle = best_length(profile, delay) if profile is not None and key[0] != "target-only" else None
        groups.append({**dict(zip(keys, [str(x) for x in key])), "mean_delay_ms": _r(delay),
                       **group_summary(g, k, oracle)})
    groups.sort(key=lambda x: (x["policy"], x["mean_delay_ms"] or 0.0, x.get("channel_state", "")))
    return {"groups": groups, "max_length": k, "emulated": bool(rounds["emulated"].fill_null(False).any()),
            "calibrated_profile": None if profile is None else profile.to_dict()}


def analyze_run(run_dir: str | Path) -> dict:
    frames = load_run(run_dir)
    out = {"run_dir": str(run_dir), "files": frames.files, "bad_lines": frames.bad_lines,
           "events": dict(sorted(frames.events.items())), **analyze_frames(frames.rounds)}
    manifest = Path(run_dir) / "manifest.json"
    if manifest.exists():
        try:
            out["emulation"] = json.loads(manifest.read_text()).get("emulation")
        except (OSError, ValueError):
            out["emulation"] = None
    if not frames.verifies.is_empty():
        v = frames.verifies
        out["cloud"] = {"rounds": len(v), "median_verify_ms": _r(v["verify_ms"].median()),
                        "p95_queue_ms": _r(v["queue_ms"].quantile(0.95)),
                        "verifiers": dict(v["node"].value_counts().iter_rows())}
    return out


def summarize_rounds(rows: list[dict]) -> dict:
    """The workload summary of in-memory round dicts (timing events): the demo's numbers."""
    f = rounds_frame(rows)
    if f.is_empty():
        return {"rounds": 0, "tokens": 0, "ms_per_token": None, "tokens_per_round": None, "acceptance_rate": None,
                "lengths_chosen": {}, "median_round_ms": None, "median_draft_ms": None, "median_verify_ms": None,
                "median_queue_ms": None, "median_network_ms": None, "median_overhead_ms": None,
                "cloud_verify_ms_per_token": None, "mean_one_way_delay_ms": None, "channel_states": {},
                "rejections": 0, "full_accepts": 0, "context_resends": 0, "median_link_error_ms": None,
                "p90_abs_link_error_ms": None, "stall_ms": 0.0, "emulated": False}
    tokens = int(f["tokens"].sum())
    drafted = f.filter(pl.col("draft_length") > 0)
    delayed = f.filter(pl.col("delay_ms") > 0)
    link_err = (delayed["link_ms"] - 2 * delayed["delay_ms"]).drop_nulls()
    return {
        "rounds": len(f), "tokens": tokens,
        "ms_per_token": _r(f["round_ms"].sum() / tokens) if tokens else None,
        "tokens_per_round": _r(tokens / len(f)),
        "acceptance_rate": _r(drafted["accepted"].sum() / drafted["draft_length"].sum(), 4) if len(drafted) else None,
        "lengths_chosen": {str(L): int(n) for L, n in drafted["draft_length"].value_counts().sort("draft_length").iter_rows()},
        **{f"median_{c}": _r(f[c].median()) for c in ("round_ms", "draft_ms", "verify_ms", "queue_ms", "network_ms")},
        "median_overhead_ms": _r((f["network_ms"] - 2 * f["delay_ms"]).median()),
        "cloud_verify_ms_per_token": _r(f["verify_ms"].sum() / tokens) if tokens else None,
        "mean_one_way_delay_ms": _r(f["delay_ms"].mean()),
        "channel_states": {str(k): int(v) for k, v in f["channel_state"].cast(pl.Utf8).fill_null("None")
                           .value_counts().iter_rows()},
        "rejections": int((drafted["accepted"] < drafted["draft_length"]).sum()),
        "full_accepts": int((drafted["accepted"] == drafted["draft_length"]).sum()),
        "context_resends": int(f.filter((pl.col("round") > 0) & pl.col("context_resent").fill_null(False)).height),
        "median_link_error_ms": _r(link_err.median()) if len(link_err) else None,
        "p90_abs_link_error_ms": _r(link_err.abs().quantile(0.9)) if len(link_err) else None,
        "stall_ms": _r(f["stall_ms"].fill_null(0).sum()),
        "emulated": bool(f["emulated"].fill_null(False).any()),
    }


def render(a: dict) -> str:
    """A readable table per group (`--json` prints the whole dict instead)."""
    lines = [f"run {a['run_dir']}: {sum(g['rounds'] for g in a['groups'])} rounds"
             + ("  [DEVICE EMULATION ON: compute times are the emulated devices']" if a["emulated"] else "")]
    if a["bad_lines"]:
        lines.append(f"  skipped lines that are not usable JSON: {a['bad_lines']}")
    head = (f"{'policy':<18} {'delay':>7} {'state':>5} {'rounds':>6} {'ms/token':>9} {'95% CI':>17} "
            f"{'tok/rnd':>7} {'accept':>6} {'mean L':>6} {'regret':>7}")
    lines += ["", head, "-" * len(head)]
    for g in a["groups"]:
        lo, hi = g["ms_per_token_ci"]
        ci = f"[{lo:.2f}, {hi:.2f}]" if lo is not None else "-"
        reg = g.get("empirical_oracle", {}).get("regret_pct")
        lines.append(f"{g['policy'][:18]:<18} {g['mean_delay_ms'] or 0:>7.1f} {g.get('channel_state', '-'):>5} "
                     f"{g['rounds']:>6} {g['ms_per_token'] or 0:>9.2f} {ci:>17} {g['tokens_per_round'] or 0:>7.2f} "
                     f"{g['acceptance_rate'] if g['acceptance_rate'] is not None else '-':>6} "
                     f"{g['mean_draft_length']:>6.2f} {'-' if reg is None else f'{reg:+.1f}%':>7}")
    lines += ["", "where the time went (share of round time, per group):"]
    for g in a["groups"]:
        shares = ", ".join(f"{k.removesuffix('_ms')} {100 * v:.0f}%" for k, v in g["share_of_time"].items() if v)
        lines.append(f"  {g['policy']} @ {g['mean_delay_ms']} ms: {shares}; p99 round {g['round_ms_p50_p90_p99'][2]} ms"
                     f"; retried rounds {g['retried_rounds']}")
    if a.get("calibrated_profile"):
        p = a["calibrated_profile"]
        lines.append("")
        lines.append("calibrated from this run: C(L) = " + ", ".join(f"{v:.1f}" for v in p["round_compute_ms"].values())
                     + " ms; S(i) = " + ", ".join(f"{s:.2f}" for s in p["survival"]))
    return "\n".join(lines)
