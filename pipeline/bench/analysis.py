"""`specstop bench analysis`: `specstop analyze` on a million round lines.

Writes a synthetic edge log (round events with every field an edge logs, a
corrupt line every 100,000) to a temporary folder, then times the two steps:
loading (lines -> validated round frame) and the analysis itself (groups,
bootstrap intervals, survival, calibration, empirical oracle).
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from pipeline.analysis import analyze_frames, load_run


def write_synthetic_log(path: Path, rounds: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    base = {"node": "edge-1", "edge_id": "edge-1", "attempt": 0, "verifier_id": "cloud-1", "queue_ms": 0.1,
            "edge_queue_ms": 0.0, "stall_ms": 0.0, "policy_version": 3, "context_resent": False,
            "draft_real_ms": 3.0, "verify_real_ms": 3.3, "emulated": False, "event": "round", "level": "info"}
    with open(path, "w") as f:
        for i in range(rounds):
            L = rng.randint(1, 8)
            a = min(L, int(rng.expovariate(0.3)))
            d = rng.choice((10.0, 40.0, 80.0))
            c = 4.0 + 2.0 * L + rng.random()
            f.write(json.dumps({**base, "request_id": f"r{i // 40}", "round": i % 40, "draft_length": L,
                                "accepted": a, "tokens": a + 1, "round_ms": c + 2 * d + 0.8, "draft_ms": 2.0 * L,
                                "verify_ms": 4.0, "network_ms": 2 * d + 0.8, "delay_ms": d, "link_ms": 2 * d,
                                "policy": rng.choice(("auto", "ucb-specstop")), "channel_state": str(int(d)),
                                "context_len": 100 + i % 40, "ts": f"2026-11-29T08:{i // 60000 % 60:02d}:00Z"}) + "\n")
            if i % 100_000 == 0:
                f.write('{"event": "round", "truncated\n')


def bench_analysis(rounds: int = 1_000_000) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "edge-1.jsonl"
        t0 = time.perf_counter()
        write_synthetic_log(log, rounds)
        t1 = time.perf_counter()
        size_mb = log.stat().st_size / 1e6
        frames = load_run(tmp)
        t2 = time.perf_counter()
        result = analyze_frames(frames.rounds)
        t3 = time.perf_counter()
    return {"round_lines": rounds, "file_mb": round(size_mb, 1), "write_s": round(t1 - t0, 2), "load_s": round(t2 - t1, 2),
            "analyze_s": round(t3 - t2, 2), "total_s": round(t3 - t1, 2), "groups": len(result["groups"]),
            "bad_lines": frames.bad_lines, "rounds_loaded": frames.rounds.height}
