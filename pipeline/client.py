"""Client side of a generate request: publish it, then read the token stream."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import ErrorMsg, GenerateRequest, TokenChunk


@dataclass
class StreamResult:
    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    chunk_seqs: list[int] = field(default_factory=list)
    chunk_times_s: list[float] = field(default_factory=list)  # since the request was sent
    finish_reason: str | None = None
    error: str | None = None
    total_s: float = 0.0
    missing_seqs: list[int] = field(default_factory=list)  # chunks lost in transit (recovered from the last)

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_reason in ("eos", "length")


async def generate_stream(nc: Client, req: GenerateRequest, timeout_s: float = 60.0,
                          limits: Limits = Limits()) -> StreamResult:
    res = StreamResult(req.request_id)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    t0 = time.perf_counter()
    try:
        await nc.publish(subjects.GENERATE, encode(req), reply=inbox)
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout_s)
            except NatsTimeoutError:
                res.error = f"no chunk within {timeout_s:.0f} s"
                break
            try:
                m = decode(msg.data, limits, expect=(TokenChunk, ErrorMsg))
            except SchemaError as exc:
                res.error = f"bad chunk: {exc}"
                break
            if isinstance(m, ErrorMsg):
                res.error = f"{m.code}: {m.message}"
                break
            res.chunk_seqs.append(m.seq)
            res.chunk_times_s.append(time.perf_counter() - t0)
            res.token_ids.extend(m.token_ids)
            res.text += m.text
            if m.done:
                res.finish_reason = m.finish_reason
                res.missing_seqs = sorted(set(range(m.seq + 1)) - set(res.chunk_seqs))
                if m.full_ids is not None and list(m.full_ids) != res.token_ids:
                    res.token_ids = list(m.full_ids)
                    res.text = m.full_text if m.full_text is not None else res.text
                break
    finally:
        await sub.unsubscribe()
    res.total_s = time.perf_counter() - t0
    return res
