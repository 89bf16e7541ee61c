"""The verifier's stream-tree sessions (docs/stream-tree.md, wire v4: schemas/stream_tree.py).

Each session is the in-process reference's cloud (nodes/models/stream_tree._Cloud: CloudTree, the
target's tree verify on its own KV cache, the walk from the tip), run as its own thread. Its
uplink is fed by decoded `stream_nodes` messages and its verdicts go out as `stream_verdict` to
the reply inbox of the edge's latest message. Nothing here decides a token: every rule is the
reference's, so the workers commit what the in-process stream tree commits.

Sessions are keyed (edge, request, nonce) and opened only by a message that carries the edge's
committed context: the first ones, and every resend after a stall, so a verifier that lost a
session (or never saw its first message) rebuilds it where the edge stands. A message for a
session not held and without context is stale: counted, logged, dropped (the edge's next resend
reopens it). At most `max_sessions` are held (the least recently heard one is closed for a new
one), each for `ttl_s` after its last message, and each tree is bounded by `Limits`. A malformed
message is refused with a one-line `bad_message` (logged, counted, answered when it has a reply
inbox) and the verifier keeps serving; messages are idempotent, so a duplicate, reordered or
lost one costs only time.

With `specstop cloud --stream-fill` a session with nothing to verify decides positions itself (the
reference's fill; it does not know the request's end, so it fills at most `max_verdict_tokens` past
what the edge holds, until the edge's end message closes the session).

With a device profile (`specstop cloud --emulate`), each session's target forwards are padded to
the emulated device's time (a device per session, as the chain verifier's; a `shared` profile makes
every session's forwards take turns on one device).
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

from nodes.device import DeviceProfile, Pacer
from nodes.models.pipelined import CLOSE, DelayLink
from nodes.models.stream_tree import Acceptance, _Cloud
from nodes.protocol.stream_tree import Limits, VerdictMsg
from schemas import subjects
from schemas.codec import Limits as CodecLimits
from schemas.codec import SchemaError, encode
from schemas.messages import BAD_MESSAGE, INTERNAL, VERSION, ErrorMsg
from schemas.rounds import SamplingParams
from schemas.stream_tree import STREAM_SCHEMA_VERSION, StreamNodes, StreamVerdict, decode_nodes, encode_verdict

Publish = Callable[[str, bytes], Awaitable[Any]]


class _SessionCloud(_Cloud):
    """The reference cloud thread; a failure is reported once instead of surfacing in an edge loop."""

    def __init__(self, *args, on_error: Callable[[BaseException], None], **kw) -> None:
        super().__init__(*args, **kw)
        self.on_error = on_error

    def run(self) -> None:
        super().run()
        if self.error is not None:
            self.on_error(self.error)


class _VerdictLink:
    """The reference cloud's downlink: each verdict becomes a `stream_verdict` to the edge's inbox."""

    def __init__(self, session: "Session", verifier_id: str, loop: asyncio.AbstractEventLoop, publish: Publish):
        self.session, self.verifier_id, self.loop, self.publish = session, verifier_id, loop, publish
        self.sent = 0

    def send(self, v: VerdictMsg) -> None:  # the session's thread
        s, c = self.session, self.session.cloud
        data = encode_verdict(StreamVerdict(s.key[1], s.key[2], self.verifier_id, v, c.misses, c.forwards,
                                            c.verified, c.stale, round(c.verify_ms, 3)))
        self.sent += 1
        to = s.reply
        if to:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.publish(to, data)))


@dataclass
class Session:
    key: tuple[str, str, str]
    reply: str | None
    last_heard: float
    cloud: Any = None
    messages: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class StreamCounters:
    opened: int = 0
    closed: int = 0
    messages: int = 0
    refused: int = 0  # malformed: never reached a session
    stale: int = 0    # for a session not held, without the context to open it
    evicted: int = 0
    failed: int = 0


class StreamSessions:
    """Every stream-tree session this verifier holds, driven from the worker's event loop."""

    def __init__(self, model: Any, vocab_size: int, verifier_id: str, codec: CodecLimits, log: Any, publish: Publish,
                 max_sessions: int, ttl_s: float, limits: Limits = Limits(), enabled: bool = True,
                 device: DeviceProfile | None = None, fill: bool = False) -> None:
        self.pair = SimpleNamespace(target=model, vocab_size=vocab_size)
        self.verifier_id, self.codec, self.log, self.publish = verifier_id, codec, log, publish
        self.max_sessions, self.ttl_s, self.limits, self.enabled = max_sessions, ttl_s, limits, enabled
        self.sessions: dict[tuple[str, str, str], Session] = {}
        self.device = device if device is not None and device.emulates_verify else None
        self.device_lock = threading.Lock() if self.device is not None and self.device.shared else None
        self.counters = StreamCounters()
        self.fill = fill  # the cloud fills its idle time (docs/stream-tree.md): bounded by max_verdict_tokens past the edge

    async def on_message(self, data: bytes, reply: str | None, subject: str) -> None:
        """One `stream_nodes` message (already known to be schema v4)."""
        self.counters.messages += 1
        try:
            if not self.enabled:
                raise SchemaError(f"verifier {self.verifier_id} does not speak the stream tree (schema "
                                  f"v{STREAM_SCHEMA_VERSION}): start the edge without --stream-tree", VERSION)
            m = decode_nodes(data, self.limits, self.codec)
            sender = subjects.sender_of(subject, subjects.DRAFT_PREFIX) or ""
            if m.edge_id != sender:
                raise SchemaError(f"stream_nodes: names edge {m.edge_id!r} but came on {subject}")
        except SchemaError as exc:
            self.counters.refused += 1
            self.log.warning("bad_message", code=exc.code, error=str(exc)[:300], replied=bool(reply), subject=subject,
                             stream_tree=True)
            if reply:
                await self.publish(reply, encode(ErrorMsg(exc.code, str(exc)[:1000])))
            return
        now = time.monotonic()
        s = self.sessions.get(m.key)
        if m.end:
            if s is not None:
                self._close(s, "end")
            return
        if s is None:
            if m.context is None:
                self.counters.stale += 1
                self.log.debug("stream_stale", request_id=m.request_id, edge_id=m.edge_id,
                               groups=len(m.nodes.groups))
                return
            s = self._open(m, reply, now)
        s.last_heard, s.messages = now, s.messages + 1
        if reply:
            s.reply = reply
        s.cloud.up.send(m.nodes)

    def _open(self, m: StreamNodes, reply: str | None, now: float) -> Session:
        if len(self.sessions) >= self.max_sessions:
            oldest = min(self.sessions.values(), key=lambda x: x.last_heard)
            self.counters.evicted += 1
            self._close(oldest, "evicted")
        s = Session(m.key, reply, now)
        loop = asyncio.get_running_loop()

        def failed(exc: BaseException) -> None:  # the session's thread
            loop.call_soon_threadsafe(lambda: loop.create_task(self._failed(s, exc)))

        params = SamplingParams(m.temperature, m.top_p)
        pacer = Pacer(self.device, m.seed) if self.device is not None else None
        s.cloud = _SessionCloud(self.pair, list(m.context), params, m.seed, DelayLink(0.0),
                                None, self.limits, Acceptance(), pacer, self.device_lock, on_error=failed,
                                fill=self.fill, fill_until=self.codec.max_context_tokens)
        s.cloud.down = _VerdictLink(s, self.verifier_id, loop, self.publish)
        s.cloud.name = f"stream-{m.request_id[:40]}"
        s.cloud.start()
        self.sessions[m.key] = s
        self.counters.opened += 1
        self.log.info("stream_opened", request_id=m.request_id, edge_id=m.edge_id, context_len=len(m.context),
                      sessions=len(self.sessions))
        return s

    async def _failed(self, s: Session, exc: BaseException) -> None:
        self.counters.failed += 1
        self.log.error("internal_error", request_id=s.key[1], edge_id=s.key[0], error=repr(exc)[:300],
                       stream_tree=True)
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
        if s.reply:
            await self.publish(s.reply, encode(ErrorMsg(INTERNAL, f"stream tree session failed: {repr(exc)[:200]}",
                                                        s.key[1])))

    def _close(self, s: Session, reason: str) -> None:
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
        s.cloud.up.send(CLOSE)
        self.counters.closed += 1
        c = s.cloud
        self.log.info("session_end", request_id=s.key[1], edge_id=s.key[0], reason=reason, stream_tree=True,
                      messages=s.messages, misses=c.misses, verify_forwards=c.forwards, nodes_verified=c.verified,
                      stale_groups=c.stale, refused=c.refused, verify_ms=round(c.verify_ms, 3),
                      verify_real_ms=round(c.verify_real_ms, 3), verify_overruns=c.overruns,
                      wait_ms=round(c.wait_ms, 3), fills=c.fills, followed=c.followed, sessions=len(self.sessions))

    def expire(self, now: float) -> None:
        for s in [s for s in self.sessions.values() if now - s.last_heard > self.ttl_s]:
            self._close(s, "ttl")

    def drop_edge(self, edge_id: str) -> None:
        for s in [s for s in self.sessions.values() if s.key[0] == edge_id]:
            self._close(s, "edge_gone")

    def close_all(self) -> None:
        for s in list(self.sessions.values()):
            self._close(s, "shutdown")

    async def run_expiry(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.ttl_s / 2))
            self.expire(time.monotonic())
