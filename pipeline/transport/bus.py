"""NATS connection helper: probe fast, then connect for the long haul.

A short probe turns "no broker there" into one clear error; long-lived workers
then connect with endless reconnects (nats-py: max_reconnect_attempts <= 0
never gives up) and report nats-py's own errors as JSON log events.

Every connection carries this process's identity and TLS settings
(`pipeline.transport.auth`: flags or environment, set once by the CLI), unless
a caller passes another `ConnectAuth` (tests and `specstop topology` hold
several identities in one process). A refused identity is one clear error,
never a reconnect loop. Replies arrive under the identity's own inbox prefix: the caller's
`inbox_prefix` (workers: `role_inbox(role, node id)`), else a client identity's
(`--client-id`), else nats-py's shared `_INBOX`, which the shipped permissions grant nobody
but the operator.
"""
from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.aio.client import Client

from pipeline.errors import PipelineError
from pipeline.transport.auth import ConnectAuth, default_auth
from pipeline.transport.jetstream import jetstream_of


def _refused(exc: BaseException) -> str | None:
    """The broker's own refusal (authorization, TLS), if that is why a connect failed."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "authorization violation" in low or "authentication" in low or "user authentication" in low:
        return "the broker refused these credentials (Authorization Violation)"
    if "certificate" in low or "ssl" in low or "tls" in low:
        return f"TLS failed ({str(exc)[:160] or type(exc).__name__})"
    return None


async def probe(url: str, timeout: float = 1.0, auth: ConnectAuth | None = None) -> None:
    auth = auth or default_auth()
    errors: list[BaseException] = []

    async def keep(exc: Exception) -> None:
        errors.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(url, max_reconnect_attempts=1, reconnect_time_wait=0, connect_timeout=timeout,
                         allow_reconnect=False, error_cb=keep, **auth.connect_kwargs()),
            timeout=timeout + 1.0)
    except PipelineError:
        raise
    except Exception as exc:  # nats raises OSError, TimeoutError, NoServersError...
        why = next((w for w in map(_refused, [*errors, exc]) if w), None)
        if why:
            raise PipelineError(f"cannot connect to the NATS broker at {url}: {why}") from None
        raise PipelineError(f"cannot reach a NATS broker at {url} ({type(exc).__name__}); "
                            "start one with `specstop broker` or pass --nats / SPECSTOP_NATS_URL") from None
    await nc.close()


async def connect(url: str, name: str, log: Any = None, long_lived: bool = True, auth: ConnectAuth | None = None,
                  inbox_prefix: str | None = None) -> Client:
    """Probe, then connect; disconnects, reconnects and errors become log events (never a credential:
    nats-py's errors name subjects and codes, not secrets)."""
    auth = auth or default_auth()
    await probe(url, auth=auth)

    conn: list[Client] = []  # the client, once connected (the callbacks read its state)

    async def error_cb(exc: Exception) -> None:
        if log is not None:
            log.warning("nats_error", error=type(exc).__name__, detail=str(exc)[:200])

    async def disconnected_cb() -> None:
        # nats-py calls this on our own close too: a clean close (no error behind it) is not a warning
        if log is None:
            return
        c = conn[0] if conn else None
        if c is not None and c.is_closed and c.last_error is None:
            log.info("nats_closed")
        else:
            err = c.last_error if c is not None else None
            log.warning("nats_disconnected", **({"error": type(err).__name__} if err is not None else {}))

    async def reconnected_cb() -> None:
        if log is not None:
            log.info("nats_reconnected", url=url)

    prefix = inbox_prefix or auth.inbox_prefix
    extra: dict[str, Any] = {"inbox_prefix": prefix} if prefix else {}
    nc = await nats.connect(
        url, name=name, error_cb=error_cb, disconnected_cb=disconnected_cb, reconnected_cb=reconnected_cb,
        max_reconnect_attempts=-1 if long_lived else 5, reconnect_time_wait=0.25, connect_timeout=2,
        ping_interval=5, max_outstanding_pings=3, pending_size=8 * 1024 * 1024, **auth.connect_kwargs(), **extra,
    )
    conn.append(nc)
    nc.specstop_js_domain = auth.js_domain  # the connection's JetStream domain: see pipeline.transport.jetstream.jetstream_of
    return nc


jetstream = jetstream_of  # the connection's JetStream context (pipeline/transport/jetstream.py), for pipeline code
