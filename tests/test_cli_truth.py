"""The CLI tells the truth: when its work did not happen, a command fails with one clear line and a
non-zero status, before any model loads where the input alone shows the problem."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.transport.broker import EmbeddedBroker
from tests.conftest import run_cli


def one_line_error(r: subprocess.CompletedProcess, fragment: str) -> str:
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("specstop: error: ") and fragment in lines[0], lines[0]
    return lines[0]


def test_an_abbreviated_flag_is_refused_not_expanded():
    one_line_error(run_cli("run", "--request", "4"), "unrecognized arguments: --request")


def test_an_unknown_flag_names_the_command_once():
    line = one_line_error(run_cli("theory", "--profil", "x"), "--profil")
    assert "specstop: error: specstop" not in line


def test_a_missing_trace_file_is_named():
    one_line_error(run_cli("edge", "--channel", "trace:/no/such/trace.csv"), "cannot read trace '/no/such/trace.csv'")


def test_a_bad_policy_fails_before_any_model_loads(tmp_path):
    # the model path does not exist either: the policy error first shows validation came before loading
    one_line_error(run_cli("generate", "--prompt", "x", "--policy", "fixd:3", "--target", str(tmp_path / "no")),
                   "unknown policy 'fixd:3'")


@pytest.mark.slow
def test_a_hub_id_with_the_hub_unreachable_fails_at_once_naming_the_hub():
    env = {"HF_ENDPOINT": "https://127.0.0.1:9", "HF_HUB_OFFLINE": "", "HF_HOME": "/nonexistent-hf-home"}
    one_line_error(run_cli("generate", "--prompt", "x", "--draft", "some-org/some-model", env=env),
                   "hub is unreachable")


def test_run_with_no_edge_fails_saying_no_edge_runs(broker):
    r = run_cli("run", "--nats", broker.url, "--requests", "2", "--no-baseline", timeout=120)
    assert r.returncode == 2
    one_line_error(r, "no edge is running")


@pytest.mark.slow
def test_run_with_an_edge_but_no_verifier_fails_saying_no_verifier_runs(tmp_path):
    with EmbeddedBroker(tmp_path / "broker") as b:
        edge = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "edge", "--nats", b.url, "--id", "lonely",
                                 "--log-file", str(tmp_path / "edge.jsonl"), "--request-timeout", "0.5",
                                 "--failover-deadline", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            lines = []
            for line in edge.stdout:  # the worker says when it is ready: no log polling needed
                lines.append(line)
                if "ready" in line:
                    break
            assert lines and "specstop edge lonely: ready on " + b.url in lines[-1], lines
            r = run_cli("run", "--nats", b.url, "--requests", "1", "--max-new-tokens", "8", "--no-baseline",
                        timeout=120)
            assert r.returncode == 2
            one_line_error(r, "start one with `specstop cloud`")
        finally:
            edge.terminate()
            edge.wait(timeout=30)


@pytest.mark.parametrize("command", ["run", "demo"])
def test_the_link_and_run_folder_flags_exist_only_where_they_act(command):
    r = run_cli(command, "--help")
    assert ("--channel" in r.stdout) == (command == "demo")
    assert ("--run-root" in r.stdout) == (command == "demo")
