"""`specstop generate` streams its text, and an interrupt keeps what was produced (exit status 130)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a Python process that loads the bundled pair

ARGS = [sys.executable, "-m", "pipeline.cli", "generate", "--prompt", "The ", "--max-new-tokens", "4000",
        "--policy", "fixed:4", "--seed", "1"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_generate_prints_what_it_produced_and_exits_130(sig):
    p = subprocess.Popen(ARGS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.read(1)  # the stream has started: generation is under way
    p.send_signal(sig)
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert first and len(first + rest) > 1
    assert "Traceback" not in err


def test_an_interrupted_json_generate_prints_its_tokens_with_stopped_by_signal():
    p = subprocess.Popen(ARGS + ["--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # --json streams nothing: wait for the model to load by asking for a short run first
    subprocess.run(ARGS[:-6] + ["--max-new-tokens", "1"], capture_output=True, timeout=120)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    obj = json.loads(out)
    assert obj["stopped_by_signal"] is True and len(obj["token_ids"]) < 4000


def test_a_json_generate_interrupted_while_loading_still_prints_its_object(monkeypatch, capsys):
    """A signal before the first token (the models still loading) leaves an empty answer, not an empty stdout."""
    from pipeline import cli
    from pipeline.cli import offline

    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(offline, "_pair", interrupted_load)
    assert cli.main(ARGS[3:] + ["--json"]) == 130
    obj = json.loads(capsys.readouterr().out)
    assert obj == {"token_ids": [], "text": "", "stopped_by_signal": True}
