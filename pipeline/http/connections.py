"""Connection-level bounds uvicorn does not have: the time and bytes a request head may take, and
how many connections may be open at once.

uvicorn's `timeout_keep_alive` only runs while a connection is idle between requests, and is
disarmed by the first byte of the next one; nothing bounds a connection that never sends a byte,
or one that trickles its request line and headers (slowloris), and httptools (llhttp) buffers a
header of any size. `guarded(...)` makes a subclass of uvicorn's httptools protocol that

- gives every request head `header_timeout_s` from the moment one may start (the connection
  opened, or the previous response completed) to its last header, else answers 408 and closes
  (closes without a word when no byte of it came: an idle keep-alive connection, or one that
  never sent anything); the rest of the body of a request answered before it was read (413)
  gets as long, then the connection is closed;
- closes with 431 a connection whose head passes `max_header_bytes` before it completes;
- answers 503 and closes a connection that would be the `max_connections + 1`-th open one.

Each refusal is reported (`on_refused(reason, peer)`) so the gateway can log and count it; a
refusal is a response written straight to the socket, with a JSON body in the API's error shape.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_S = 1.0  # after a refusal: how long what the client still sends is read and dropped before closing

REASONS = {  # reason -> (status, phrase, message)
    "header_timeout": (408, "Request Timeout", "request line and headers not received within {t:g} s"),
    "headers_too_large": (431, "Request Header Fields Too Large", "request line and headers over {b} bytes"),
    "too_many_connections": (503, "Service Unavailable", "the gateway has {c} connections open (its limit)"),
    "bad_http": (400, "Bad Request", "not a valid HTTP/1.1 request"),
}


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 << 10
    max_connections: int = 1024


def refusal(reason: str, limits: ConnectionLimits) -> bytes:
    """The whole HTTP response for a connection refused for `reason` (it is closed after)."""
    status, phrase, text = REASONS[reason]
    message = text.format(t=limits.header_timeout_s, b=limits.max_header_bytes, c=limits.max_connections)
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "service_unavailable", "param": None, "code": reason}}).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def guarded(limits: ConnectionLimits, on_refused: Callable[[str, str], None]) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits (pass it as `uvicorn.Config(http=...)`)."""

    class GuardedProtocol(HttpToolsProtocol):
        """A connection is in a request's head (from its start or the end of the previous message to
        the last header) or in its body; the deadline runs only while no response is pending."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._heads = self._answered = 0   # request heads completed / responses completed
            self._head_bytes = 0
            self._in_head = True
            self._lingering = False
            self._timer: asyncio.TimerHandle | None = None
            if len(self.connections) > limits.max_connections:
                self._refuse("too_many_connections")
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(limits.header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self.transport.is_closing() or self._lingering:
                return
            if self._in_head and self._head_bytes:
                self._refuse("header_timeout")
                return
            # nothing to answer: idle after a response (keep-alive expired), silent since it opened,
            # or the body of a request already answered (413, 408, ...) still arriving
            self.transport.close()
            if not self._in_head:
                self._report("unread_body")
            elif not self._answered:
                self._report("header_timeout")

        def _refuse(self, reason: str) -> None:
            """Answer and close, lingering: the write side is shut first and what the client still sends
            is read and dropped for up to LINGER_S, so the answer is not lost to a reset (closing a socket
            with unread bytes resets the connection, and the client may never see the answer)."""
            self._disarm()
            if self.transport.is_closing() or self._lingering:
                return
            self.transport.write(refusal(reason, limits))
            if self.transport.can_write_eof():
                self._lingering = True
                self.transport.write_eof()
                self._timer = self.loop.call_later(LINGER_S, self.transport.close)
            else:
                self.transport.close()
            self._report(reason)

        def _report(self, reason: str) -> None:
            try:
                on_refused(reason, "%s:%d" % self.client if self.client else "")
            except Exception:  # reporting must not break the server
                pass

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing() or self._lingering:
                return
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > limits.max_header_bytes:
                self._refuse("headers_too_large")

        def send_400_response(self, msg: str) -> None:  # the parser refused the bytes
            self._refuse("bad_http")

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._heads += 1
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            self._head_bytes = 0
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._answered += 1
            super().on_response_complete()
            if self._answered >= self._heads and not self.transport.is_closing() and not self._lingering:
                self._arm()  # the next head (or the rest of an unread body) has header_timeout_s

    return GuardedProtocol
