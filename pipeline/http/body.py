"""A request body, bounded before any work proportional to its content.

`read_body` admits a body by bytes before reading it (`Content-Length` over the cap: 413 at once,
the rest never read), counts while streaming (a chunked body is cut at the cap), bounds the time
the client may take to send it (408), and holds its bytes against a budget shared by every body
being read or parsed, so many large bodies at once are refused (429) instead of filling memory.
`decode_json` is pure CPU (strict UTF-8, no NaN/Infinity, any nesting or number a client can
write ends as a 400) and runs in the gateway's parsing threads, never on the event loop.
"""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from pipeline.http.errors import APIError, bad_request

# a JSON escape of a UTF-16 surrogate: only then can a parsed string hold a lone one (which no UTF-8 encodes)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyBudget:
    """Bytes of request bodies held at once (read, or waiting to be parsed), at most `limit`."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise APIError(429, f"the gateway holds {self.held} bytes of request bodies (its limit is {self.limit}): "
                                "try again later", "rate_limit_exceeded", None, "overloaded")
        self.held += n

    def give(self, n: int) -> None:
        self.held = max(0, self.held - n)


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body is over {limit} bytes", "invalid_request_error", None, "request_too_large")


def declared_length(request: Request, limit: int) -> int | None:
    """The body's `Content-Length` (None: chunked), refused at once when over `limit`."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isascii() or not raw.strip().isdigit():
        raise bad_request(f"Content-Length '{raw[:32]}' is not a byte count", None, "invalid_request")
    n = int(raw.strip()[:20])
    if n > limit:
        raise too_large(limit)
    return n


async def read_body(request: Request, limit: int, timeout_s: float, budget: BodyBudget) -> tuple[bytes, int]:
    """The whole body and the bytes taken from `budget` for it (the caller gives them back)."""
    declared = declared_length(request, limit)
    held = declared or 0
    budget.take(held)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                if size > held:  # chunked (or longer than declared: the server refuses that itself)
                    budget.take(size - held)
                    held = size
                chunks.append(chunk)
    except TimeoutError:
        budget.give(held)
        raise APIError(408, f"request body not received within {timeout_s:g} s ({size} bytes arrived)",
                       "invalid_request_error", None, "request_timeout") from None
    except ClientDisconnect:
        budget.give(held)
        raise APIError(499, "client closed the request", "invalid_request_error", None, "client_gone") from None
    except BaseException:
        budget.give(held)
        raise
    return b"".join(chunks), held


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong with it (CPU-bound: call it off the loop)."""
    if not raw.strip():
        raise bad_request("request body is empty (expected a JSON object)", None, "invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})", None,
                          "invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request("request body is nested too deeply", None, "invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, a number of more than 4300 digits, NaN / Infinity
        why = "a number has too many digits" if "integer string conversion" in str(exc) else str(exc)[:200]
        raise bad_request(f"request body is not valid JSON: {why}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, not {_json_kind(body)}", None, "invalid_json")
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("request body has a string with a lone UTF-16 surrogate (\\ud800-\\udfff): "
                              "not Unicode text", None, "invalid_json") from None
        except RecursionError:
            raise bad_request("request body is nested too deeply", None, "invalid_json") from None
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
