"""`/metrics` over HTTP: prometheus_client's own threaded server, one per worker registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from pipeline.errors import PipelineError


def parse_hostport(text: str, flag: str = "--metrics") -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', host 127.0.0.1) -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise PipelineError(f"{flag} '{text}' is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise PipelineError(f"{flag} '{text}': port '{port}' is not a number") from None
    if not 0 <= p <= 65535:
        raise PipelineError(f"{flag} '{text}': port must be in 0..65535")
    return host, p


@dataclass
class MetricsServer:
    server: Any
    thread: Any
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, addr: str) -> MetricsServer:
    """Serve `registry` at http://HOST:PORT/metrics in a daemon thread (scrapes never touch the event loop)."""
    host, port = parse_hostport(addr)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise PipelineError(f"--metrics {addr}: cannot listen ({exc.strerror or exc})") from None
    return MetricsServer(server, thread, host, server.server_address[1])
