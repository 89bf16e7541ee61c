"""nats-server processes started from a deployment's config files (`config.ServerSpec`)."""
from __future__ import annotations

import os
import subprocess
import time

from pipeline.errors import PipelineError
from pipeline.topology.config import ServerSpec
from pipeline.transport.broker import _last_error, die_with_parent, nats_server_binary, stop_process


def check_config(spec: ServerSpec) -> str:
    """`nats-server -t`: the config parses and every value it reads is there; the server's verdict line."""
    r = subprocess.run([nats_server_binary(), "-t", "-c", str(spec.conf)], env={**os.environ, **spec.env},
                       capture_output=True, text=True, timeout=30)
    out = (r.stdout + r.stderr).strip()
    if r.returncode:
        raise PipelineError(f"{spec.conf} is not a valid nats-server config: {out.splitlines()[-1] if out else r.returncode}")
    return out


class ServerProcess:
    """One nats-server; its log is `<conf dir>/nats-server.log`. It dies with the process that started it."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.dir = spec.conf.parent
        self.log = self.dir / "nats-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "ServerProcess":
        ports = self.dir / "ports"
        ports.mkdir(exist_ok=True)
        for old in ports.glob("*.ports"):
            old.unlink()
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(self.spec.conf), "-l", str(self.log),
                                      "--ports_file_dir", str(ports)],
                                     env={**os.environ, **self.spec.env}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if list(ports.glob(f"*_{self.proc.pid}.ports")):
                return self
            if self.proc.poll() is not None:
                raise PipelineError(f"{self.spec.name}: nats-server exited at start: {_last_error(self.log)}")
            time.sleep(0.02)
        self.stop()
        raise PipelineError(f"{self.spec.name}: nats-server did not start within {timeout:.0f} s")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, needle: str, count: int = 1, timeout: float = 15.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text()[after:].count(needle) >= count:
                return
            time.sleep(0.05)
        raise PipelineError(f"{self.spec.name}: no '{needle}' in its log after {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
        self.proc = None


def start_servers(specs: list[ServerSpec]) -> list[ServerProcess]:
    started: list[ServerProcess] = []
    try:
        for s in specs:
            started.append(ServerProcess(s).start())
    except Exception:
        for p in started:
            p.stop()
        raise
    return started
