"""Commands as processes: SIGTERM stops them and what they started; the broker keeps its store."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import run_cli
from tests.waiting import NotReached, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once `pid` no longer exists (reaping it if it is our zombie child)."""
    def absent() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return False
    try:
        return wait_until(absent, timeout=timeout, interval=0.05, what=f"process {pid} to exit")
    except NotReached:
        return False


@pytest.fixture
def broker_cli(tmp_path):
    port = free_port()
    proc = start("broker", "--port", str(port), "--run-root", str(tmp_path))
    info = json.loads(proc.stdout.readline())
    yield proc, info, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_to_the_broker_command_stops_its_nats_server(broker_cli):
    proc, info, port = broker_cli
    [server] = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert gone(server)


def test_a_killed_broker_command_takes_its_nats_server_with_it(broker_cli):
    proc, info, port = broker_cli
    [server] = children(proc.pid)
    proc.kill()
    proc.wait()
    assert gone(server)


def printed(stream, event: str) -> str:
    """The first line of `stream` that names `event` (it blocks until then, or fails at the stream's end)."""
    for line in stream:
        if event in line:
            return line
    raise AssertionError(f"the command ended without printing {event}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_the_broker_command_at_once_with_its_nats_server(broker_cli, sig):
    proc, info, port = broker_cli
    [server] = children(proc.pid)
    os.kill(server, signal.SIGSTOP)  # a server that cannot stop holds the first signal's stop for its 5 s
    proc.send_signal(sig)
    printed(proc.stdout, "broker_stopping")
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 130  # the first signal's stop alone ends with 0, once the server is killed
    assert proc.stderr.read().splitlines()[-1] == f"specstop: second {sig.name}: stopping now without draining"
    assert gone(server)


def test_a_busy_port_is_one_clear_line_and_no_run_directory(broker_cli, tmp_path):
    proc, info, port = broker_cli
    before = set(tmp_path.iterdir())
    r = run_cli("broker", "--port", str(port), "--run-root", str(tmp_path), timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "address already in use" in r.stderr
    assert set(tmp_path.iterdir()) == before


def test_the_broker_keeps_its_jetstream_store_across_restarts(tmp_path):
    from pipeline.transport.jetstream import ensure_stream
    from pipeline.transport import aio, bus

    async def stream_names(url: str, create: bool) -> list[str]:
        nc = await bus.connect(url, "probe", long_lived=False)
        try:
            if create:
                await ensure_stream(nc.jetstream())
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    port = free_port()
    names = []
    for create in (True, False):
        proc = start("broker", "--port", str(port), "--run-root", str(tmp_path))
        info = json.loads(proc.stdout.readline())
        try:
            names.append(aio.run(stream_names(info["url"], create)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    assert names == [["SPECSTOP_TIMING"], ["SPECSTOP_TIMING"]] and info["store_dir"].endswith("jetstream")


def test_sigterm_stops_the_controller_after_its_batch(broker_cli, tmp_path):
    proc, info, port = broker_cli
    log = tmp_path / "control.jsonl"
    ctl = start("control", "--nats", info["url"], "--log-file", str(log))
    def started() -> bool:
        assert ctl.poll() is None, ctl.stderr.read()
        return '"control_started"' in (log.read_text() if log.exists() else "")
    wait_until(started, timeout=60, interval=0.1, what="control_started in the controller's log")
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(timeout=20) == 0
    assert '"control_stopped"' in log.read_text()
