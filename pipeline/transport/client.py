"""Client side of a generate request: publish it, then read the token stream.

Chunks carry consecutive `seq`; the client appends them in order. A chunk can
be lost while the broker restarts (the edge may reconnect and publish before
this client has resubscribed), so after its own reconnect, on a gap in `seq`,
or after a silence, the client asks the edges for the stream's state
(`ResumeMsg`, authenticated by the request's inbox); the edge holding the
request (or that just finished it) answers with a resync chunk carrying the
whole output so far, which replaces what the client has. Tokens are never
lost or duplicated; how many arrived late through a resync is reported.

"No responders" (NATS's 503 status on our inbox: no edge subscribed) is
reported as such. With `wait_for_edge_s`, a request that no edge took (no
responders, `overloaded`, or `unavailable` before its first chunk) is sent
again after a pause until that long has passed: nothing was generated for it,
so sending it again is safe. A client that stops
waiting (its timeout, or its task cancelled) tells the edges to stop the
generation (`CancelMsg`).

The edge holding a request forwards its heartbeat (`AliveMsg`) to the client whenever it has
sent nothing for a second, so any message is a sign of life: after `edge_silence_s` with none
(counted from the later of the last message and our own last reconnect, and not while we are
disconnected: a broker restart silences everyone), the stream ends with `edge_gone` instead of
waiting out `timeout_s`. Before that, a silence of `RESUME_AFTER_SILENCE_S` asks for a resume,
which a live edge answers even when it has nothing streamed yet.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import AliveMsg, CancelMsg, ErrorMsg, GenerateRequest, ResumeMsg, TokenChunk

NO_RESPONDERS = "503"
NOT_TAKEN = ("overloaded", "unavailable")  # refusals before any work: the request may be sent again
RESUME_AFTER_SILENCE_S = 2.0  # the edge sends something every second while it holds the request
EDGE_SILENCE_S = 4.0         # then the stream ends with EDGE_GONE
EDGE_GONE = "edge_gone"      # client-side code (never on the wire)
RESUME_RETRY_S = 1.0
RESUME_AFTER_RECONNECT_S = 5.0


class StopSignal(asyncio.Event):
    """A `stop` for generate_stream that says why it was set (`reason`, the cancel's: the edge logs a
    `stop` as a finished request, anything else as a cancelled one). The first reason set stays."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "client_gone"

    def stop(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


@dataclass
class StreamResult:
    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    chunk_seqs: list[int] = field(default_factory=list)
    chunk_times_s: list[float] = field(default_factory=list)  # since the request was sent
    chunk_mono: list[float] = field(default_factory=list)     # time.monotonic() of each chunk's arrival
    finish_reason: str | None = None
    error: str | None = None
    error_code: str | None = None
    total_s: float = 0.0
    missing_seqs: list[int] = field(default_factory=list)    # chunks never received (their tokens came by resync)
    duplicate_seqs: list[int] = field(default_factory=list)  # chunks received twice (ignored)
    resyncs: int = 0                                          # resync chunks applied
    late_tokens: int = 0                                      # tokens that arrived through a resync
    retracted_tokens: int = 0  # streamed tokens a resync contradicted (never expected: a lossless stream has 0)
    sent_at: float = 0.0  # time.monotonic() when the request was (last) sent

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_reason in ("eos", "length")


def _no_responders(msg) -> bool:
    return bool(msg.headers) and msg.headers.get("Status") == NO_RESPONDERS and not msg.data


class _Stream:
    """In-order assembly of one request's chunks (pure: no I/O)."""

    def __init__(self, res: StreamResult, t0: float):
        self.res, self.t0 = res, t0
        self.high = -1                        # the last seq whose tokens are in res.token_ids
        self.ahead: dict[int, TokenChunk] = {}
        self.seen: set[int] = set()
        self.gap = False

    def add(self, m: TokenChunk) -> bool:
        """Take one chunk; True when the stream is complete."""
        res = self.res
        now = time.monotonic()
        if m.resync:
            return self._resync(m, now)
        if m.seq in self.seen or m.seq <= self.high:
            res.duplicate_seqs.append(m.seq)
            return False
        self.seen.add(m.seq)
        res.chunk_seqs.append(m.seq)
        res.chunk_times_s.append(time.perf_counter() - self.t0)
        res.chunk_mono.append(now)
        self.ahead[m.seq] = m
        return self._drain()

    def _drain(self) -> bool:
        """Append the chunks that follow what we have, in order; True at the last one."""
        res = self.res
        while self.high + 1 in self.ahead:
            c = self.ahead.pop(self.high + 1)
            self.high += 1
            res.token_ids.extend(c.token_ids)
            res.text += c.text
            if c.done:
                return self._finish(c)
        self.gap = bool(self.ahead)
        return False

    def _resync(self, m: TokenChunk, now: float) -> bool:
        res = self.res
        if m.seq < self.high or m.full_ids is None:
            return False  # older than what we have
        res.resyncs += 1
        res.chunk_mono.append(now)
        full = list(m.full_ids)
        have = res.token_ids
        res.retracted_tokens += sum(1 for a, b in zip(have, full) if a != b) + max(0, len(have) - len(full))
        res.late_tokens += max(0, len(full) - len(res.token_ids))
        res.token_ids = full
        res.text = m.full_text if m.full_text is not None else res.text
        self.high = m.seq
        self.ahead = {s: c for s, c in self.ahead.items() if s > self.high}
        if m.done:
            return self._finish(m)
        return self._drain()

    def _finish(self, c: TokenChunk) -> bool:
        res = self.res
        res.finish_reason = c.finish_reason
        res.missing_seqs = sorted(set(range(c.seq + 1)) - self.seen)
        if c.full_ids is not None and list(c.full_ids) != res.token_ids:  # a safety net; never expected
            have, full = res.token_ids, list(c.full_ids)
            res.retracted_tokens += sum(1 for a, b in zip(have, full) if a != b) + max(0, len(have) - len(full))
            res.late_tokens += max(0, len(full) - len(have))
            res.token_ids = list(c.full_ids)
            res.text = c.full_text if c.full_text is not None else res.text
        return True


async def generate_stream(nc: Client, req: GenerateRequest, timeout_s: float = 60.0, limits: Limits = Limits(),
                          subject: str = subjects.GENERATE, wait_for_edge_s: float = 0.0,
                          on_chunk: Callable[[StreamResult], None] | None = None,
                          stop: asyncio.Event | None = None, edge_silence_s: float = EDGE_SILENCE_S) -> StreamResult:
    """Send `req` and read its stream. `timeout_s`: the longest wait for a chunk before giving up;
    `edge_silence_s`: the longest silence of the edge (no chunk, no keepalive) before `edge_gone`.
    `on_chunk(res)` runs after every chunk taken into `res` (the HTTP gateway streams from it).
    `stop`, once set, ends the stream with a `cancel` to the edge: a caller that also cancels this
    task may have that cancel lost (Python 3.11's wait_for, inside nats-py's next_msg, swallows one
    that races an arriving chunk), and the generation would then run to its end unseen."""
    res = StreamResult(req.request_id)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    t0 = time.perf_counter()
    stream = _Stream(res, t0)
    give_up_edge = time.monotonic() + wait_for_edge_s
    reconnects = nc.stats.get("reconnects", 0)
    reconnected_at = last_resume = -1e9
    finished = False
    try:
        res.sent_at = last_heard = last_alive = time.monotonic()
        await nc.publish(subject, encode(req), reply=inbox)
        while True:
            now = time.monotonic()
            if stop is not None and stop.is_set():
                res.error, res.error_code = "stopped by the caller", getattr(stop, "reason", "client_gone")
                break
            if now - last_heard > timeout_s:
                res.error, res.error_code = f"no chunk within {timeout_s:g} s", "timeout"
                break
            if nc.stats.get("reconnects", 0) != reconnects or not nc.is_connected:
                reconnects, reconnected_at = nc.stats.get("reconnects", 0), now
            silent = now - max(last_alive, reconnected_at)
            if silent > edge_silence_s:
                res.error, res.error_code = (f"the edge holding this request stopped answering: nothing from it "
                                             f"for {silent:.1f} s (no chunk, no keepalive)"), EDGE_GONE
                break
            wants = (stream.gap or now - reconnected_at < RESUME_AFTER_RECONNECT_S
                     or silent > RESUME_AFTER_SILENCE_S)
            if wants and now - last_resume >= RESUME_RETRY_S:
                last_resume = now
                await _publish(nc, subjects.RESUME, ResumeMsg(req.request_id, inbox))
            try:
                msg = await sub.next_msg(timeout=min(RESUME_RETRY_S, timeout_s, edge_silence_s))
            except NatsTimeoutError:
                continue
            last_alive = time.monotonic()
            if _no_responders(msg):
                last_heard = last_alive
                if not res.chunk_seqs and time.monotonic() < give_up_edge:
                    await asyncio.sleep(0.25)
                    res.sent_at = time.monotonic()
                    await nc.publish(subject, encode(req), reply=inbox)
                    continue
                res.error, res.error_code = f"no edge is listening on {subject} (no responders)", "no_responders"
                finished = True
                break
            try:
                m = decode(msg.data, limits, expect=(TokenChunk, ErrorMsg, AliveMsg))
            except SchemaError as exc:
                res.error, res.error_code = f"bad chunk: {exc}", exc.code
                break
            if isinstance(m, ErrorMsg):
                last_heard = last_alive
                if m.code in NOT_TAKEN and not res.chunk_seqs and time.monotonic() < give_up_edge:
                    await asyncio.sleep(0.25)
                    res.sent_at = time.monotonic()
                    await nc.publish(subject, encode(req), reply=inbox)
                    continue
                res.error, res.error_code = f"{m.code}: {m.message}", m.code
                finished = True
                break
            if isinstance(m, AliveMsg):
                continue  # a keepalive: the edge holds the request
            last_heard = last_alive
            if m.request_id != req.request_id:
                continue
            complete = stream.add(m)
            if on_chunk is not None:
                on_chunk(res)
            if complete:
                finished = True
                break
    finally:
        if not finished:  # we stop waiting: the edge should stop generating
            why = res.error_code or (getattr(stop, "reason", None) if stop is not None and stop.is_set() else None)
            await _publish(nc, subjects.CANCEL, CancelMsg(req.request_id, inbox, (why or "client_gone")[:64]))
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    res.total_s = time.perf_counter() - t0
    return res


async def _publish(nc: Client, subject: str, msg) -> None:
    try:
        await nc.publish(subject, encode(msg))
    except Exception:
        pass  # the connection is gone: the edge's deadline ends the request
