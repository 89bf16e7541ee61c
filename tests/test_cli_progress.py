"""Long commands show they are alive: off a terminal, one plain line on stderr per period
(SPECSTOP_PROGRESS_EVERY_S; 0 here, so every step shows); stdout keeps only the result."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

POLICIES = ["bench", "policies", "--kinds", "short", "--members", "1", "--seeds", "1", "--rounds", "30",
            "--workers", "1", "--policies", "fixed:4", "--no-tuned"]


def specstop(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECSTOP_PROGRESS_EVERY_S": "0"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_bench_policies_counts_its_profiles_on_stderr():
    r = specstop(*POLICIES)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines == [f"profiles: {k}/{len(lines)} ({100 * k // len(lines)}%)" for k in range(1, len(lines) + 1)]
    assert len(lines) > 1 and "profiles:" not in r.stdout


def test_bench_policies_with_json_prints_no_progress():
    r = specstop(*POLICIES, "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout)["profiles"] > 1


@pytest.mark.slow  # loads the bundled pair
def test_generate_with_json_counts_its_tokens_on_stderr():
    r = specstop("generate", "--prompt", "The cat", "--max-new-tokens", "6", "--policy", "fixed:4", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == "tokens: 6/6 (100%)"
    assert len(json.loads(r.stdout)["token_ids"]) == 6
