"""Client side of a generate request: publish it, then read the token stream.

"No responders" (NATS's 503 status on our inbox: no edge subscribed) is
reported as such, or, with `wait_for_edge_s`, retried until an edge appears
(the request reached nobody, so sending it again is safe). A client that stops
waiting (its timeout, or its task cancelled) tells the edges to stop the
generation (`CancelMsg`, authenticated by the request's inbox).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import CancelMsg, ErrorMsg, GenerateRequest, TokenChunk

NO_RESPONDERS = "503"


@dataclass
class StreamResult:
    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    chunk_seqs: list[int] = field(default_factory=list)
    chunk_times_s: list[float] = field(default_factory=list)  # since the request was sent
    finish_reason: str | None = None
    error: str | None = None
    error_code: str | None = None
    total_s: float = 0.0
    missing_seqs: list[int] = field(default_factory=list)  # chunks lost in transit (recovered from the last)
    duplicate_seqs: list[int] = field(default_factory=list)  # chunks received twice (ignored)
    streamed_ids: list[int] = field(default_factory=list)    # tokens as they streamed, before any recovery
    sent_at: float = 0.0  # time.monotonic() when the request was (last) sent

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_reason in ("eos", "length")


def _no_responders(msg) -> bool:
    return bool(msg.headers) and msg.headers.get("Status") == NO_RESPONDERS and not msg.data


async def generate_stream(nc: Client, req: GenerateRequest, timeout_s: float = 60.0, limits: Limits = Limits(),
                          subject: str = subjects.GENERATE, wait_for_edge_s: float = 0.0) -> StreamResult:
    """Send `req` and read its stream. `timeout_s`: the longest wait for any one chunk."""
    res = StreamResult(req.request_id)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    t0 = time.perf_counter()
    give_up_edge = time.monotonic() + wait_for_edge_s
    finished = False
    try:
        res.sent_at = time.monotonic()
        await nc.publish(subject, encode(req), reply=inbox)
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout_s)
            except NatsTimeoutError:
                res.error, res.error_code = f"no chunk within {timeout_s:g} s", "timeout"
                break
            if _no_responders(msg):
                if not res.chunk_seqs and time.monotonic() < give_up_edge:
                    await asyncio.sleep(0.25)
                    res.sent_at = time.monotonic()
                    await nc.publish(subject, encode(req), reply=inbox)
                    continue
                res.error, res.error_code = f"no edge is listening on {subject} (no responders)", "no_responders"
                finished = True
                break
            try:
                m = decode(msg.data, limits, expect=(TokenChunk, ErrorMsg))
            except SchemaError as exc:
                res.error, res.error_code = f"bad chunk: {exc}", exc.code
                break
            if isinstance(m, ErrorMsg):
                res.error, res.error_code = f"{m.code}: {m.message}", m.code
                finished = True
                break
            if m.seq in res.chunk_seqs:
                res.duplicate_seqs.append(m.seq)
                continue
            res.chunk_seqs.append(m.seq)
            res.chunk_times_s.append(time.perf_counter() - t0)
            res.token_ids.extend(m.token_ids)
            res.streamed_ids.extend(m.token_ids)
            res.text += m.text
            if m.done:
                finished = True
                res.finish_reason = m.finish_reason
                res.missing_seqs = sorted(set(range(m.seq + 1)) - set(res.chunk_seqs))
                if m.full_ids is not None and list(m.full_ids) != res.token_ids:
                    res.token_ids = list(m.full_ids)
                    res.text = m.full_text if m.full_text is not None else res.text
                break
    finally:
        if not finished:  # we stop waiting: the edge should stop generating
            await _cancel(nc, req.request_id, inbox, res.error_code or "client_gone")
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    res.total_s = time.perf_counter() - t0
    return res


async def _cancel(nc: Client, request_id: str, inbox: str, reason: str) -> None:
    try:
        await nc.publish(subjects.CANCEL, encode(CancelMsg(request_id, inbox, reason[:64])))
    except Exception:
        pass  # the connection is gone: the edge's deadline ends the request
