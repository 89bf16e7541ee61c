"""The stream tree in `experiment compare --stream W,...`: beside the chains, same prompts and seeds,
same emulated devices, at the same delays.

The stream tree is an edge's setting (`edge --stream-tree on --stream-width W`), so each width runs
on edges of its own (one per delay). It has no rounds: its requests are timed by the edge's
`stream_verdict` events, a request's ms/token being its summed `gap_ms` (from the end of the draft's
prefill, as a chain's first round) over its tokens; each verdict is one row of the frame here
(`round_ms` := gap_ms), so the chains' interval and paired-gap code applies unchanged. The references
come from the run itself, at each delay: the best fixed length in hindsight (the chain `fixed:L` of
least ms/token: the best single-chain policy a chain learner is measured against) and `auto`. Each
stream row carries its ratio to both (reference / stream: > 1 is the stream tree faster), paired
gaps with intervals, and its ratio to the cloud streaming its own generation, modelled on the
emulated cloud (one single-position forward per token). The checks name their reference and hold
either way: the goal (1.5x the best chain at a delay, never worse than today at 0 ms) is met or
missed, never dropped.

Width `auto` (`edge --stream-width auto`: the width learned per request, control/stream_width.py) is one
more row, `stream:wauto`, with the widths its requests ran at, and is also measured against its own
oracle: the best fixed width in hindsight among the run's other stream rows at that delay (a check of its
own: within AUTO_WIDTH_WITHIN of it, met or missed).

`--stream-fill W,...` runs the stream tree of each width once more on a lab whose cloud fills its idle
time (`cloud --stream-fill`: the cloud decides the tokens the edge has not offered yet, exact, one target
forward per filled token). Its rows (`stream:wW:fill`) carry the cloud's work per token (tokens it
filled, target forwards) and are checked apart (`"fill": true`): the cloud generating is not
speculation, so a fill row is never the best width nor the learned width's oracle.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import polars as pl

from pipeline.analysis.hindsight import best_fixed
from pipeline.analysis.stats import delay_buckets, ratio_ci
from pipeline.bench.stream_vs_chain import GOAL_AT_DELAY, GOAL_AT_ZERO, cloud_streaming_ms, stream_overrun_share
from pipeline.experiments.lab import WARMUP_PREFIX, Cell, Lab, LabConfig
from pipeline.experiments.refusals import MAX_OVERRUN_SHARE, Refusal, failed_requests
from pipeline.experiments.trees import TREE_CONCURRENCY

STREAM_PREFIX = "stream:w"
FILL_SUFFIX = ":fill"
AUTO = "auto"
AUTO_WIDTH_WITHIN = 0.05  # the learned width's goal: at most this much slower than the best fixed width


def stream_edges(delays, widths, fill: bool = False) -> dict[str, tuple[float, int | str]]:
    """edge id -> (one-way delay, width) for every delay and width (`-fill`: on a filling cloud)."""
    return {f"edge-d{d:g}-stream-w{w}{'-fill' if fill else ''}": (float(d), w) for d in delays for w in widths}


def stream_label(width: int | str, fill: bool = False) -> str:
    """A row's policy label: `stream:wW`, `stream:wW:fill` where the cloud fills its idle time."""
    return f"{STREAM_PREFIX}{width}{FILL_SUFFIX if fill else ''}"


def is_fill(policy: str) -> bool:
    return policy.startswith(STREAM_PREFIX) and policy.endswith(FILL_SUFFIX)


def stream_flags(width: int | str) -> list[str]:
    return ["--stream-tree", "on", "--stream-width", str(width)]


async def run_streams(cfg: LabConfig, delays, widths, prompts: list[str], n: int, progress=None,
                      fill: bool = False) -> tuple[pl.DataFrame, list[Refusal]]:
    """Every width at every delay, a lab per delay (its edges share a verifier, filling its idle time
    with `fill`): one row per verdict, labelled `stream:wW` (`stream:wW:fill`), and what the machine did
    that the numbers cannot carry."""
    frames, refused = [], []
    cfg = replace(cfg, concurrency=min(cfg.concurrency, TREE_CONCURRENCY))  # one edge thread per request
    what = "stream tree with fill" if fill else "stream tree"
    for d in delays:
        edges = {e: w for e, (_, w) in stream_edges([d], widths, fill).items()}
        with Lab(cfg, f"compare-stream{'-fill' if fill else ''}-d{d:g}", {e: f"const:{d:g}" for e in edges},
                 edge_flags={e: stream_flags(w) for e, w in edges.items()},
                 cloud_flags=["--stream-fill"] if fill else None) as lab:
            cells = [Cell(e, "auto", n, tag=f"stream-w{w}{'-fill' if fill else ''}") for e, w in edges.items()]
            results = await lab.run(cells, prompts, progress)
            run_dir = lab.run_dir
        events = {e: _events(run_dir / f"{e}.jsonl") for e in edges}
        ends = [x for x in _events(run_dir / "cloud-1.jsonl")
                if x.get("event") == "session_end" and x.get("stream_tree")]
        done = [x for es in events.values() for x in es if x.get("event") == "stream_done"]
        share = stream_overrun_share(done, ends)
        if lab.emulation() and share is not None and share > MAX_OVERRUN_SHARE:
            refused.append(Refusal("machine_load", f"{what} at {d:g} ms: {100 * share:.1f} % of forwards "
                                                   "computed slower than the emulated devices (at most "
                                                   f"{100 * MAX_OVERRUN_SHARE:g} %)"))
        failed = failed_requests(sum(len(r.failed) for r in results), sum(len(r.streams) for r in results))
        if failed is not None:
            refused.append(Refusal(failed.check, f"{what} at {d:g} ms: {failed.why}"))
        frames.append(stream_frame(events, edges, fill, ends))
    return (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()), refused


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stream_frame(events: dict[str, list[dict]], widths: dict[str, int | str], fill: bool = False,
                 cloud_ends: list[dict] = ()) -> pl.DataFrame:
    """One row per `stream_verdict` that committed tokens (warm-up requests left out): request_id,
    policy `stream:wW` (`stream:wW:fill`) of the edge that served it, round_ms (its gap), tokens (kept),
    delay_ms, the width the request ran at (its `stream_done`; a fixed width's own where that event is
    missing), and on a request's first verdict the cloud's work for the whole request (`filled`,
    `target_forwards`, from its `session_end` in `cloud_ends`; 0 where there is none)."""
    ran = {x["request_id"]: x["width"] for es in events.values() for x in es
           if x.get("event") == "stream_done" and isinstance(x.get("width"), int) and "request_id" in x}
    work = {x["request_id"]: (int(x.get("fills", 0)), int(x.get("verify_forwards", 0)))
            for x in cloud_ends if "request_id" in x}
    rows, seen = [], set()
    for e, es in events.items():
        for x in es:
            rid = x.get("request_id", "")
            if x.get("event") != "stream_verdict" or rid.startswith(WARMUP_PREFIX):
                continue
            filled, forwards = work.get(rid, (0, 0)) if rid not in seen else (0, 0)
            seen.add(rid)
            rows.append({"request_id": rid, "policy": stream_label(widths[e], fill), "edge_id": e,
                         "round_ms": float(x["gap_ms"]), "tokens": int(x["tokens"]),
                         "delay_ms": float(x["one_way_ms"]), "miss": bool(x["miss"]),
                         "width": ran.get(rid, widths[e] if isinstance(widths[e], int) else None),
                         "filled": filled, "target_forwards": forwards})
    schema = {"request_id": pl.Utf8, "policy": pl.Utf8, "edge_id": pl.Utf8, "round_ms": pl.Float64,
              "tokens": pl.Int64, "delay_ms": pl.Float64, "miss": pl.Boolean, "width": pl.Int64,
              "filled": pl.Int64, "target_forwards": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def missing_stream_cells(srows: list[dict], n_delays: int, widths, fill_widths=()) -> list[Refusal]:
    """A refusal when the stream tree was asked for and some (delay, width) cell has no row: an empty
    or partial comparison must not read as a success."""
    out = []
    for what, asked, fill in (("stream tree", widths, False), ("stream tree with fill", fill_widths, True)):
        want, got = n_delays * len(asked), sum(1 for r in srows if bool(r.get("fill")) == fill)
        if asked and got < want:
            out.append(Refusal("too_few_rounds", f"{what}: {want - got} of {want} (delay, width) cells have no verdicts"))
    return out


def stream_rows(chains: pl.DataFrame, streams: pl.DataFrame, lengths, emulation: dict | None) -> list[dict]:
    """Per delay and width: ms/token with its interval, misses per token, and against the best fixed
    chain in hindsight and `auto` (ratios and paired gaps) and the modelled cloud streaming."""
    from pipeline.experiments.compare import paired_gap

    if streams.is_empty():
        return []
    streaming = cloud_streaming_ms(emulation)
    both = pl.concat([chains.select("request_id", "policy", "round_ms", "tokens", "delay_ms"),
                      streams.select("request_id", "policy", "round_ms", "tokens", "delay_ms")], how="vertical_relaxed")
    # sorted first so the groups (and the rows) come in delay order, whatever the bucket labels are
    keyed = both.with_columns(delay_buckets(both["delay_ms"].fill_null(0.0))).sort("delay_ms", nulls_last=False)
    rows = []
    for (delay,), g in keyed.group_by(["delay"], maintain_order=True):
        ref, ref_ms = best_fixed(g, lengths)
        auto = g.filter(pl.col("policy") == "auto")
        auto_ms = ratio_ci(auto)[0]
        for p in sorted(x for x in g["policy"].unique().to_list() if x.startswith(STREAM_PREFIX)):
            sub = g.filter(pl.col("policy") == p)
            j, lo, hi = ratio_ci(sub)
            if j is None:
                continue
            misses = streams.filter(pl.col("request_id").is_in(sub["request_id"].unique().implode()))["miss"].sum()
            row = {"delay": str(delay), "policy": p, "verdicts": sub.height, "ms_per_token": _r(j),
                   "ci": [_r(lo), _r(hi)], "misses_per_token": _r(misses / max(1, int(sub["tokens"].sum())), 4),
                   "best_fixed_chain": ref, "best_fixed_chain_ms_per_token": _r(ref_ms),
                   "best_fixed_chain_over_this": _r(ref_ms / j, 3) if ref else None,
                   "auto_ms_per_token": _r(auto_ms), "auto_over_this": _r(auto_ms / j, 3) if auto_ms else None,
                   "cloud_streaming_ms_per_token_modelled": streaming,
                   "this_vs_cloud_streaming": _r(j / streaming, 3) if streaming else None}
            if is_fill(p):  # the cloud's own work per token: how much of this row is the cloud generating
                mine = streams.filter(pl.col("request_id").is_in(sub["request_id"].unique().implode()))
                tokens = max(1, int(mine["tokens"].sum()))
                row.update(fill=True, filled_per_token=_r(mine["filled"].sum() / tokens, 3),
                           target_forwards_per_token=_r(mine["target_forwards"].sum() / tokens, 3))
            if ref:
                row["vs_best_fixed_chain"] = paired_gap(sub, g.filter(pl.col("policy") == ref))
            if not auto.is_empty():
                row["vs_auto"] = paired_gap(sub, auto)
            if p == STREAM_PREFIX + AUTO:
                row.update(_against_best_width(g, sub, streams, j))
            rows.append(row)
    return rows


def _against_best_width(g: pl.DataFrame, sub: pl.DataFrame, streams: pl.DataFrame, j: float) -> dict:
    """The learned width's row: the widths its requests ran at, and its oracle, the best fixed width in
    hindsight at this delay (None where no fixed width ran beside it)."""
    from pipeline.experiments.compare import paired_gap

    mine = streams.filter(pl.col("request_id").is_in(sub["request_id"].unique().implode()))
    per_request = mine.group_by("request_id").agg(pl.col("width").first()).drop_nulls("width")
    counts = per_request.group_by("width").len().sort("width")
    out: dict = {"widths": {str(w): int(n) for w, n in zip(counts["width"], counts["len"])},
                 "best_fixed_width": None, "best_fixed_width_ms_per_token": None, "best_fixed_width_over_this": None}
    fixed = {}
    for p in g["policy"].unique().to_list():
        if p.startswith(STREAM_PREFIX) and p != STREAM_PREFIX + AUTO and not is_fill(p):
            ms = ratio_ci(g.filter(pl.col("policy") == p))[0]
            if ms is not None:
                fixed[p] = ms
    if fixed:
        best = min(fixed, key=fixed.get)
        out.update(best_fixed_width=best, best_fixed_width_ms_per_token=_r(fixed[best]),
                   best_fixed_width_over_this=_r(fixed[best] / j, 3),
                   vs_best_fixed_width=paired_gap(sub, g.filter(pl.col("policy") == best)))
    return out


def stream_checks(rows: list[dict]) -> list[dict]:
    """Per delay, the best stream width against each reference: the goal met or missed, the reference
    named; the best fill row the same way, apart (`fill`: the cloud generating, not speculation)."""
    by_delay: dict[str, list[dict]] = {}
    for r in rows:
        by_delay.setdefault(r["delay"], []).append(r)
    out = []
    for d, rs in by_delay.items():
        goal = GOAL_AT_DELAY if _above_zero(d) else GOAL_AT_ZERO
        for fill in (False, True):
            kind = [r for r in rs if bool(r.get("fill")) == fill]
            if not kind:
                continue
            best = min(kind, key=lambda r: r["ms_per_token"])
            for name, key, ref in (("best_fixed_chain", "best_fixed_chain_over_this", best["best_fixed_chain"]),
                                   ("auto", "auto_over_this", "auto")):
                ratio = best.get(key)
                out.append({"delay": d, "stream": best["policy"], "fill": fill, "reference": name,
                            "reference_policy": ref, "ratio": ratio, "goal": goal,
                            "met": ratio is not None and ratio >= goal})
        learned = next((r for r in rs if r["policy"] == STREAM_PREFIX + AUTO and r.get("best_fixed_width")), None)
        if learned is not None:  # the learned width against its own oracle (reported either way)
            out.append({"delay": d, "stream": learned["policy"], "fill": False, "reference": "best_fixed_width",
                        "reference_policy": learned["best_fixed_width"], "ratio": learned["best_fixed_width_over_this"],
                        "goal": round(1.0 / (1.0 + AUTO_WIDTH_WITHIN), 3),
                        "met": learned["ms_per_token"] <= (1.0 + AUTO_WIDTH_WITHIN) * learned["best_fixed_width_ms_per_token"]})
    return out


def _above_zero(delay: str) -> bool:
    """A delay key above 0 ms: a value ("50.0") or, where measured delays were binned, a bin whose upper
    edge is ("(-inf, 52.66]", "(52.66, inf]")."""
    try:
        return float(delay) > 0
    except ValueError:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", delay)
        return not numbers or float(numbers[-1]) > 0


def _r(x, digits: int = 2):
    return None if x is None else round(float(x), digits)
