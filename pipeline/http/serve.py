"""`specstop gateway`: the OpenAI-compatible HTTP API in front of the edges, served by uvicorn on our loop."""
from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn

from pipeline.transport.confirm import confirm_sent
from pipeline import logs
from pipeline.errors import PipelineError
from pipeline.http.app import create_app
from pipeline.http.connections import ConnectionLimits, guarded
from pipeline.http.config import GatewayConfig, GatewayOptions
from pipeline.http.gateway import Gateway
from pipeline.orchestration.signals import on_stop_signals
from pipeline.metrics import GatewayMetrics, parse_hostport, serve as serve_metrics, tap
from pipeline.transport import bus
from pipeline.transport.auth import role_inbox


def listen(addr: str) -> socket.socket:
    """A listening socket on HOST:PORT (port 0: a free one), or one clear error."""
    host, port = parse_hostport(addr, "--http")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio's standard loop sets TCP_NODELAY only on accepted sockets that say so (with
    # proto 0, a response's headers and body, two writes, met the client's delayed ACK: 40 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PipelineError(f"--http {addr}: cannot listen ({exc.strerror or exc})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HTTPServer:
    """uvicorn on the running event loop, on a socket we bound; signals are left to the caller.
    Connections are bounded (`pipeline.http.connections`): head time and bytes, connections open."""

    def __init__(self, app, sock: socket.socket, limits: ConnectionLimits = ConnectionLimits(), log=None):
        def refused(reason: str, peer: str) -> None:
            if log is not None:
                log.warning("http_refused", code=reason, peer=peer)

        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, ws="none", http=guarded(limits, refused))
        self.server = uvicorn.Server(config)
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.task: asyncio.Task | None = None

    async def start(self) -> "HTTPServer":
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise PipelineError("HTTP server stopped at start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=10)
        self.sock.close()


async def start_gateway(nc, cfg: GatewayConfig, tokenizer, log, http: str = "127.0.0.1:0",
                        node_id: str = "gateway-1", metrics: GatewayMetrics | None = None):
    """Gateway + metrics + HTTP server on this loop: (gateway, metrics, server). Tests and benches use it too."""
    metrics = metrics or GatewayMetrics(node_id)
    log = tap(log, metrics)
    gw = Gateway(nc, cfg, tokenizer, log)
    await gw.start()
    metrics.bind(gw)
    limits = ConnectionLimits(cfg.header_timeout_s, cfg.max_header_bytes, cfg.max_connections)
    server = await HTTPServer(create_app(gw, metrics.registry), listen(http), limits, log).start()
    metrics.bind_http(server.server.server_state)
    return gw, metrics, server


def quiet_transformers() -> None:
    """A long prompt makes transformers print an advisory line to stderr; stderr is for errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


async def serve_gateway(opts: GatewayOptions) -> None:
    from nodes.models.loading import BUNDLED_DRAFT, load_tokenizer

    log = logs.configure(opts.node_id, opts.log_file)
    listen(opts.http).close()  # a busy port fails before the tokenizer loads
    metrics = GatewayMetrics(opts.node_id)
    extra = serve_metrics(metrics.registry, opts.metrics) if opts.metrics else None
    await bus.probe(opts.nats_url)
    tokenizer = load_tokenizer(opts.tokenizer or BUNDLED_DRAFT)
    quiet_transformers()
    edge = opts.config.edge_id  # a device's gateway replies under its own prefix; else the client identity's
    nc = await bus.connect(opts.nats_url, opts.node_id, log, inbox_prefix=role_inbox("gateway", edge) if edge else None)
    gw, metrics, server = await start_gateway(nc, opts.config, tokenizer, log, opts.http, opts.node_id, metrics)
    gw.log.info("gateway_started", url=f"http://{opts.http.rpartition(':')[0] or '127.0.0.1'}:{server.port}/v1",
                model=opts.config.model_name, metrics=extra.url if extra else None)
    print(f"specstop gateway ready: http://{opts.http.rpartition(':')[0] or '127.0.0.1'}:{server.port}/v1 "
          f"(model '{opts.config.model_name}')", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    on_stop_signals(stop)  # a second signal stops at once
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, server.task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    # stop accepting, let running generations finish for the drain timeout, then cancel the rest
    server.server.should_exit = True
    deadline = loop.time() + opts.drain_timeout_s
    while gw.running and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await gw.stop()
    await server.stop()
    if extra is not None:
        extra.close()
    try:
        await confirm_sent(nc, 1.0)
    except Exception:
        pass
    await nc.close()
    gw.log.info("gateway_stopped")
