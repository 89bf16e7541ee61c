"""Where a round's time goes under concurrency, read from the workers' JSON logs.

`LogSlice` marks the logs' ends before a workload and reads only the lines written
after, so one cluster can run several concurrency levels. `summarize` turns a slice
into: the batch-size histogram per worker (forward passes per rows in them: edge draft
steps, cloud verifies) and the mean per-round breakdown: batching wait, waiting for the model thread,
forward, cache bookkeeping and sampling on each side, and transport (the round's
network time: everything the edge timed minus compute and queues, less the injected
link delay, which is reported apart). Forward includes
the K/V writes and reads; bookkeeping is ids/positions/masks plus those K/V writes and
reads (so the two overlap by the K/V part, which the cache layout is about).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from statistics import fmean


class LogSlice:
    def __init__(self, *paths: Path):
        self.paths = paths
        self.start = {p: p.stat().st_size if p.exists() else 0 for p in paths}

    def read(self) -> dict[str, list[dict]]:
        """Every JSON line written since the slice began, per file stem (edge-1, cloud-1)."""
        out: dict[str, list[dict]] = {}
        for p in self.paths:
            lines = []
            if p.exists():
                with p.open("rb") as f:
                    f.seek(self.start[p])
                    for raw in f.read().splitlines():
                        try:
                            lines.append(json.loads(raw))
                        except ValueError:  # a line cut by a writer mid-flush
                            continue
            out[p.stem] = lines
        return out


def _mean(xs: list[float]) -> float:
    return round(fmean(xs), 3) if xs else 0.0


def batch_histograms(edge: list[dict], cloud: list[dict]) -> dict:
    """Forward passes per batch size on each worker (an edge draft step, a cloud verify), and the
    mean batch size a round ran in (the edge's: rows in its first draft step)."""
    rounds = [e for e in edge if e.get("event") == "round" and e.get("draft_batch_size", 0) > 0]
    e_hist = Counter(n for b in edge if b.get("event") == "draft_batch" for n in b["rows_per_step"])
    verifies = [v for v in cloud if v.get("event") == "verify"]
    c_hist = Counter(b["size"] for b in cloud if b.get("event") == "verify_batch")
    c_hist[1] += sum(1 for v in verifies if v.get("batch_size") == 1)
    return {"edge_draft": {str(k): v for k, v in sorted(e_hist.items()) if v},
            "cloud_verify": {str(k): v for k, v in sorted(c_hist.items()) if v},
            "edge_mean_batch_per_round": _mean([r["draft_batch_size"] for r in rounds]),
            "cloud_mean_batch_per_round": _mean([v.get("batch_size", 1) for v in verifies])}


def round_breakdown(edge: list[dict], cloud: list[dict]) -> dict:
    """Mean ms per round of each part (drafted rounds and target-only rounds alike)."""
    verify = {(v["request_id"], v["round"], v["attempt"]): v for v in cloud if v.get("event") == "verify"}
    rows = []
    for r in (e for e in edge if e.get("event") == "round"):
        v = verify.get((r["request_id"], r["round"], r["attempt"]), {})
        e_wait = r.get("draft_batch_wait_ms", 0.0)
        e_batch = r.get("draft_forward_ms", 0.0) + r.get("draft_bookkeeping_ms", 0.0) + r.get("draft_sample_ms", 0.0)
        c_wait = v.get("batch_wait_ms", 0.0)
        rows.append({
            "round_ms": r["round_ms"],
            "edge_batch_wait_ms": e_wait,
            "edge_model_thread_wait_ms": max(0.0, r["edge_queue_ms"] + r["draft_ms"] - e_wait - e_batch),
            "edge_forward_ms": r.get("draft_forward_ms", 0.0),
            "edge_bookkeeping_ms": r.get("draft_bookkeeping_ms", 0.0),
            "edge_sampling_ms": r.get("draft_sample_ms", 0.0),
            "cloud_batch_wait_ms": c_wait,
            "cloud_model_thread_wait_ms": max(0.0, r["queue_ms"] - c_wait),
            "cloud_forward_ms": v.get("forward_ms", 0.0),
            "cloud_bookkeeping_ms": v.get("bookkeeping_ms", 0.0),
            "cloud_verify_ms": r["verify_ms"],
            "transport_ms": max(0.0, r["network_ms"] - r.get("link_ms", 0.0)),
            "injected_delay_ms": r.get("link_ms", 0.0),
            "draft_length": r["draft_length"], "tokens": r["accepted"] + 1,
        })
    out = {k: _mean([x[k] for x in rows]) for k in (rows[0] if rows else [])}
    out["rounds"] = len(rows)
    return out


def summarize(logs: dict[str, list[dict]], edge: str = "edge-1", cloud: str = "cloud-1") -> dict:
    e, c = logs.get(edge, []), logs.get(cloud, [])
    return {"batch_sizes": batch_histograms(e, c), "per_round_ms": round_breakdown(e, c)}
