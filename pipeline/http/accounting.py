"""Every HTTP response is one `http_request` log event (so one count in
`specstop_gateway_requests_total{endpoint,status}`), whatever produced it.

The generation endpoints log their own, richer event (tokens, rounds, time to first token) and
mark the request (`LOGGED`); this middleware logs the others (models, unknown paths, wrong
methods) and turns an exception no endpoint handled into a 500 in the API's error shape, logged
with its traceback and counted like any other response. Probes (`/health`, `/metrics`) are logged
only when they fail with a 500: they come every few seconds and say nothing about clients.
"""
from __future__ import annotations

import json
import time
from typing import Any

from pipeline.http.errors import APIError

LOGGED = "specstop.logged"   # scope key: the endpoint logged this request itself
QUIET = frozenset({"/health", "/health/live", "/metrics"})
ENDPOINTS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", *QUIET})


def endpoint_of(path: str) -> str:
    """A bounded label for a path: the route it matches, or `other`."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"


class Accounting:
    """Pure ASGI middleware (it sees the status line and, for an error, the body's `code`)."""

    def __init__(self, app: Any, log: Any):
        self.app, self.log = app, log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        seen: dict[str, Any] = {"status": None, "code": None}

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and (seen["status"] or 0) >= 400 and seen["code"] is None:
                seen["code"] = _error_code(message.get("body", b""))
            await send(message)

        path = scope.get("path", "")
        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            err = APIError(500, f"internal error: {type(exc).__name__}", "server_error", None, "internal")
            if seen["status"] is None:
                try:
                    await _send_error(send, err)
                except Exception:  # the client is gone: nobody to answer
                    pass
            fields = dict(endpoint=endpoint_of(path), total_ms=round((time.perf_counter() - t0) * 1e3, 3),
                          error=f"{type(exc).__name__}: {str(exc)[:300]}", exc_info=exc)
            if scope.get(LOGGED):  # the endpoint counted its response already (a failure after it)
                self.log.error("internal_error", **fields)
            else:
                self.log.error("http_request", status=500, code="internal", **fields)
            return
        if scope.get(LOGGED) or path in QUIET:
            return
        status = seen["status"] or 500
        fields = dict(endpoint=endpoint_of(path), status=status, method=scope.get("method"),
                      total_ms=round((time.perf_counter() - t0) * 1e3, 3))
        if status < 400:
            self.log.info("http_request", **fields)
        else:
            self.log.warning("http_request", code=seen["code"] or "error", **fields)


def _error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body)["error"]["code"]
    except Exception:
        return None
    return code if isinstance(code, str) else None


async def _send_error(send: Any, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
