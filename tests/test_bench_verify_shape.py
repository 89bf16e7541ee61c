"""`specstop bench verify --shape`: a random-weight target of a named shape, every column reported (CPU: the
graph column is skipped with its reason); a bad shape is a one-line error."""
from __future__ import annotations

import json

from tests.conftest import run_cli


def test_bench_verify_shape_reports_every_column_on_cpu():
    r = run_cli("bench", "verify", "--shape", "tiny", "--batches", "1,3", "--steps", "2", "--flips", "--json")
    assert r.returncode == 0, r.stderr[-800:]
    out = json.loads(r.stdout)
    assert out["shape"] == "tiny" and out["dtype"] == "float32" and out["floor_ms"] > 0
    assert out["graph_forward_skipped"] == "CUDA graphs need a CUDA device"
    for b in ("1", "3"):
        row = out["batches"][b]
        assert row["fast_static"] is True and "fast_static_error" not in row
        for k in ("eager_step_ms", "fast_step_ms", "per_request_ms", "bare_forward_ms", "fast_step_over_floor"):
            assert row[k] > 0, k
    assert out["flips"]["differ_from_eager_batched"]["fast"] == 0


def test_bench_verify_bad_shape_is_one_line():
    r = run_cli("bench", "verify", "--shape", "gpt5", "--json")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--shape" in r.stderr
