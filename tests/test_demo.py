"""`specstop demo` end to end as a user runs it: separate processes, embedded broker, controller."""
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_demo_json_summary_and_run_directory(tmp_path):
    r = run_cli("demo", "--requests", "4", "--concurrency", "2", "--max-new-tokens", "24",
                "--run-root", str(tmp_path), "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert {"ms_per_token", "requests", "tokens", "rounds", "log_dir"} <= set(s)
    assert s["requests"] == s["completed"] == 4 and s["tokens"] == 4 * 24
    assert s["baselines"]["one_round_trip_per_token"]["ms_per_token"] > s["ms_per_token"]
    run = Path(s["log_dir"])
    for f in ("manifest.json", "summary.json", "edge-1.jsonl", "cloud-1.jsonl", "control-1.jsonl"):
        assert (run / f).exists(), f
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["target"]["hash"] and manifest["commit"]
    events = [json.loads(x) for x in (run / "edge-1.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round"]
    assert max(x["policy_version"] for x in rounds) > 0  # the edge acted on controller updates


def test_demo_refuses_a_bad_channel_in_one_line(tmp_path):
    r = run_cli("demo", "--channel", "markov:fast", "--run-root", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "channel" in r.stderr
