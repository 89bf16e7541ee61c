"""The edge's side of the stream tree over NATS (`specstop edge --stream-tree`, docs/stream-tree.md).

A request runs the in-process reference's edge loop (nodes/models/stream_tree._edge_loop: the
best-first tree, one draft forward per `batch` nodes, pruning and restarts on verdicts, resends
on a stall) on its own thread; only its two links are replaced. The uplink encodes each nodes
message as `stream_nodes` (schemas/stream_tree.py, v4), sleeps the emulated one-way delay on the
event loop and publishes it, with this request's inbox as reply subject, to the verifier that
answered last with tokens (the queue group until one has). The downlink takes the inbox's
`stream_verdict` messages after the emulated delay back; an `error` message (e.g. `version` from a
verifier that does not speak the stream tree) fails the request with its code. The first message,
before any draft forward, is the context alone (the verifier opens the session and prefills
meanwhile); the context goes along until a verdict that commits tokens has been heard, on pings and
whenever the root's own group is (re)sent, so a verifier that lost the session rebuilds it where the
edge stands.

Each verdict that commits tokens streams them to the client as it arrives (on the event loop, not
after the draft forward the edge thread is in) and writes one `stream_verdict` log event when the
edge thread has taken it (fields in docs/stream-tree.md); the request ends with `stream_done`.

The delay the lead estimate (and `--stream-tree auto`) uses is the one the edge measured before the
request (`edge_delay_ms`); each stream request adds the delay its messages paid to that estimate.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

from nats.aio.msg import Msg

from control.stream_choice import CHAIN, STREAM, Decision
from control.stream_width import WidthChoice
from nodes.config import StreamShape
from nodes.models.stream_tree import StreamTreeResult, _edge_loop, _TreeKV
from nodes.protocol.request import finish
from nodes.protocol.stream_tree import Limits, NodesMsg, unseen_part
from schemas import subjects
from schemas.codec import Int32Array, SchemaError, decode, encode
from schemas.messages import ErrorMsg, TokenChunk
from schemas.stream_tree import STREAM_SCHEMA_VERSION, StreamNodes, decode_verdict, encode_nodes, stream_version

if TYPE_CHECKING:
    from nodes.edge import EdgeWorker, Live
    from nodes.protocol.request import EdgeRequest


class _Stopped(Exception):
    """Raised in the edge thread when the request was cancelled or failed from the event loop."""


class _Down:
    """The reference loop's downlink: verdicts (and errors) from the inbox, after the emulated delay."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()
        self.last: Any = None  # the last stream_verdict taken (the verifier's counters)

    def recv(self, timeout_s: float | None) -> object | None:
        try:
            item = self.q.get_nowait() if timeout_s is not None and timeout_s <= 0 else self.q.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        self.last = item
        return item.verdict


class _Fifo:
    """One emulated direction on the event loop: each item is handed on `delay_ms` after it was put, in
    the order put (per-message sleeps would let a later, shorter sleep overtake an earlier one, and a
    child's group that overtakes its parent's is dropped by the cloud as stale)."""

    def __init__(self, worker: "EdgeWorker", deliver) -> None:
        self.w, self.deliver = worker, deliver
        self.q: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def put(self, item: Any, delay_ms: float) -> None:
        self.q.put_nowait((time.perf_counter() + delay_ms / 1e3, item))

    async def _run(self) -> None:
        while True:
            due, item = await self.q.get()
            wait_ms = (due - time.perf_counter()) * 1e3
            if wait_ms > 0:
                await self.w.link.sleep(wait_ms)
            await self.deliver(item)


def _first_verifier(worker: "EdgeWorker") -> str | None:
    """Where a stream request goes when session placement left it to the queue group. Its first groups
    go out before any verdict says which verifier holds the session, and a group the queue group hands
    to another verifier is lost there until a stall's resend (a second of nothing), so every message
    goes to one verifier from the start: one at random, as the group would pick, among those whose
    heartbeats are fresh and that are not draining. None (the queue group) when none is heard yet."""
    p = worker.placement
    usable = sorted(p.peers.usable(time.monotonic(), p.since))
    return p.rng.choice(usable) if usable else None


class StreamTreeRun:
    """One request's stream tree through the workers."""

    def __init__(self, worker: "EdgeWorker", r: "EdgeRequest", live: "Live", shape: StreamShape,
                 one_way_ms: float, limits: Limits = Limits()) -> None:
        self.w, self.r, self.live, self.shape, self.limits = worker, r, live, shape, limits
        self.loop = asyncio.get_running_loop()
        self.down = _Down()
        self.verifier: str | None = r.verifier if r.verifier is not None else _first_verifier(worker)
        self.heard = False
        self.committed = list(r.context)  # the context the edge holds (edge thread)
        # What the event loop has streamed: a verdict's tokens go to the client on receipt, not after the
        # draft forward the edge thread is in (up to one device step sooner); the thread, seeing the same
        # verdicts in the same order, sends the last chunk (after `on_finish`) and logs every verdict.
        self.known = len(r.context)
        self.streamed: list[int] = []
        self.chunks = 0
        self.final_seen = False
        self.stopped = False  # failed or cancelled: nothing more goes to the client from here
        self.inbox = worker.nc.new_inbox()
        self.t0 = self.last_t = 0.0
        self.seq = 0
        self.pending: list[asyncio.Task] = []  # chunks and log lines not yet delivered, in order
        self.one_way_ms = one_way_ms  # the lead estimate's d: what the edge measured before this request
        self.link_ms = {"up": [0.0, 0], "down": [0.0, 0]}  # the delays this request's messages paid: sum, count
        # called on the event loop with the request's result and the one-way ms its messages paid, before the
        # last chunk goes out, so the client's next request is decided on this one's cost
        self.on_finish: Callable[[float, StreamTreeResult, float], None] | None = None

    # --- uplink: edge thread -> event loop -> NATS ---------------------------------------
    def send(self, m: NodesMsg) -> None:  # the edge thread
        root_sent = bool(m.groups) and m.groups[0][0] == m.root[0]
        ctx = tuple(self.committed[:m.root[1] + 1]) if not self.heard or not m.groups or root_sent else None
        data = encode_nodes(self._wire(m, ctx))
        self.loop.call_soon_threadsafe(lambda: self.up.put(data, self._paid("up", self.w.channel.sample().up_ms)))

    def _paid(self, direction: str, ms: float) -> float:
        """The event loop: count one message's emulated delay towards the request's measured delay."""
        acc = self.link_ms[direction]
        acc[0] += ms
        acc[1] += 1
        return ms

    def measured_one_way_ms(self) -> float:
        """The one-way delay this request's messages paid (each direction's mean, halved sum); the
        estimate it started with where a direction carried nothing."""
        (up, nu), (down, nd) = self.link_ms["up"], self.link_ms["down"]
        return 0.5 * (up / nu + down / nd) if nu and nd else self.one_way_ms

    def _wire(self, m: NodesMsg, ctx: tuple[int, ...] | None, end: bool = False) -> StreamNodes:
        req = self.r.req
        return StreamNodes(self.w.cfg.edge_id, req.request_id, self.r.session, req.seed, m, req.temperature,
                           req.top_p, ctx, end)

    async def _publish(self, data: bytes) -> None:
        try:
            await self.w.nc.publish(subjects.draft(self.w.cfg.edge_id, self.verifier), data, reply=self.inbox)
        except Exception as exc:  # a closed connection: the stall resend retries, the deadline ends it
            self.w.log.warning("publish_failed", error=type(exc).__name__, request_id=self.r.req.request_id)

    # --- downlink: NATS -> event loop -> edge thread --------------------------------------
    async def _on_reply(self, msg: Msg) -> None:
        try:
            if stream_version(msg.data, self.w.limits) == STREAM_SCHEMA_VERSION:
                item: Any = decode_verdict(msg.data, self.limits, self.w.limits)
                if item.request_id != self.r.req.request_id or item.session != self.r.session:
                    raise SchemaError(f"stream_verdict for {item.request_id}/{item.session} on this request's inbox")
            else:
                item = decode(msg.data, self.w.limits, expect=(ErrorMsg,))
        except SchemaError as exc:
            self.w.log.warning("bad_message", code=exc.code, error=str(exc)[:300], subject=msg.subject,
                               request_id=self.r.req.request_id, stream_tree=True)
            return
        self.down_fifo.put(item, self._paid("down", self.w.channel.sample().down_ms))

    async def _take(self, item: Any) -> None:
        if isinstance(item, ErrorMsg):
            from nodes.edge import RoundFailed
            self.stopped = True
            self.down.q.put(RoundFailed(item.code, f"verifier refused the stream tree: {item.message}"))
            return
        # Only a verdict that commits something names the verifier that holds the live tree: with several
        # verifiers in the queue group, the opening ping's empty answer may come from one that never saw
        # a group, and pinning to it would leave every later message stale there.
        if self._stream_on_receipt(item.verdict) and (not self.heard or self.verifier is None):
            self.verifier = item.verifier_id  # later messages go to the verifier that holds the session
            self.heard = True
        self.down.q.put(item)

    def _stream_on_receipt(self, v) -> bool:
        """The event loop: stream what a verdict commits now, by the rules the edge thread applies to
        the same verdicts in the same order (`unseen_part`, then `finish`), so both cut the output at
        the same token; the verdict that ends the request is left to the thread. True when it
        committed tokens past what the edge held."""
        new = unseen_part(self.known, v)
        if not new:
            return False
        self.known += len(new)
        if self.final_seen or self.stopped:
            return True
        before = len(self.streamed)
        if finish(new, self.streamed, self.r.req.max_new_tokens, self.w.pair.eos_ids) is not None:
            self.final_seen = True
            return True
        seq, self.chunks = self.chunks, self.chunks + 1
        self.pending.append(self.loop.create_task(self._send_chunk(seq, self.streamed[before:], False, "")))
        return True

    # --- the request ---------------------------------------------------------------------
    async def run(self) -> StreamTreeResult:
        self.up, self.down_fifo = _Fifo(self.w, self._publish), _Fifo(self.w, self._take)
        sub = await self.w.nc.subscribe(self.inbox, cb=self._on_reply)
        fut = self.loop.run_in_executor(None, self._thread)
        try:
            res = await asyncio.shield(fut)
            await asyncio.gather(*self.pending)  # every chunk out before the request counts as done
        except asyncio.CancelledError:
            self.stopped = True
            self.down.q.put(_Stopped())  # the edge thread raises it at its next look at the downlink
            await asyncio.wait({fut}, timeout=10)
            if fut.done() and not fut.cancelled():
                fut.exception()  # _Stopped, expected: retrieved so it is not reported as lost
            raise
        finally:
            self.up.task.cancel()
            self.down_fifo.task.cancel()
            try:
                await sub.unsubscribe()
            except Exception:
                pass
            root = (1, max(0, len(self.committed) - 1), self.committed[-1])
            await self.w.send_now(subjects.draft(self.w.cfg.edge_id, self.verifier),
                                  encode_nodes(self._wire(NodesMsg(root, ()), None, end=True)))
        self.w.log.info("stream_done", width=self.shape.width,
                        **_done_fields(self.r.req.request_id, res, self.down.last))
        return res

    def _thread(self) -> StreamTreeResult:
        s, pair, r = self.shape, self.w.pair, self.r
        prompt = list(r.context)
        kv = _TreeKV(pair.draft, prompt, pair.vocab_size)  # prefilled before the clock starts, as a chain's
        self.t0 = self.last_t = time.perf_counter()
        resend = s.resend_after_s if s.resend_after_s is not None else max(1.0, 20 * self.one_way_ms / 1e3)
        return _edge_loop(pair, kv, prompt, r.req.max_new_tokens, r.params, s.width, s.cumulative, s.batch,
                          s.flush_ms / 1e3, self.limits, s.min_path_prob, s.lead_penalty, self.one_way_ms / 1e3,
                          self, self.down, SimpleNamespace(error=None), resend, on_commit=self._on_commit,
                          pacer=self.w.pacer)  # the emulated edge device, if any: each draft forward padded

    def _on_commit(self, res: StreamTreeResult, new: list[int], kept: list[int], miss: bool, done: bool) -> None:
        """The edge thread, after a verdict committed `new`: log it on the event loop, and send the last
        chunk there once `on_finish` has the request's cost (the others went out on receipt)."""
        self.committed.extend(new)
        now = time.perf_counter()
        v = self.down.last
        fields = {"request_id": self.r.req.request_id, "seq": self.seq, "start": v.verdict.start,
                  "tokens": len(kept), "committed": len(new), "miss": miss, "out_tokens": len(res.token_ids),
                  "gap_ms": round((now - self.last_t) * 1e3, 3), "elapsed_ms": round((now - self.t0) * 1e3, 3),
                  "verifier_id": v.verifier_id, "one_way_ms": self.one_way_ms, "misses": res.misses,
                  "expansions": res.expansions, "draft_forwards": res.draft_forwards, "nodes_sent": res.nodes_sent,
                  "messages_sent": res.messages_sent, "resends": res.resends, "draft_ms": round(res.draft_ms, 3),
                  "cloud_misses": v.misses, "verify_forwards": v.forwards, "nodes_verified": v.verified,
                  "stale_groups": v.stale, "verify_ms": v.verify_ms, "done": done}
        self.seq += 1
        self.last_t = now
        reason = res.finish_reason
        if done and self.on_finish is not None:
            ms = (now - self.t0) * 1e3
            self.loop.call_soon_threadsafe(lambda: self.on_finish(ms, res, self.measured_one_way_ms()))
        self.loop.call_soon_threadsafe(lambda: self.pending.append(self.loop.create_task(
            self._deliver(fields, kept, done, reason))))

    async def _deliver(self, fields: dict, kept: list[int], done: bool, reason: str) -> None:
        """The last chunk (the others went out on receipt), then the verdict's log line."""
        if done:
            await self._send_chunk(self.chunks, kept, True, reason)  # the loop counted every chunk before it
        self.w.log.debug("stream_verdict", **fields)

    async def _send_chunk(self, seq: int, kept: list[int], done: bool, reason: str) -> None:
        r, live = self.r, self.live
        r.out.extend(kept)
        text = ""
        full_text = None
        if r.detok is not None:
            text = r.detok.feed(kept) + (r.detok.flush() if done else "")
            full_text = r.detok.flush_all() if done else None
        if done:
            r.finish_reason = reason
        chunk = TokenChunk(r.req.request_id, seq, Int32Array(kept), text, done, reason if done else None,
                           seq + 1, len(r.out), Int32Array(r.out) if done else None, full_text)
        if done:
            live.terminal = chunk
        if live.inbox:
            live.last_sent = time.monotonic()
            await self.w.send_now(live.inbox, encode(chunk))


async def run_stream_tree(worker: "EdgeWorker", r: "EdgeRequest", live: "Live") -> bool:
    """Serve the request as a stream tree, unless it asks for `target-only` (a baseline) or, with
    `--stream-tree auto`, the cost rule on this edge's own measurements prefers rounds
    (control/stream_choice.py). True when it ran here."""
    if r.policy_spec == "target-only":
        return False
    one_way = edge_delay_ms(worker)
    choice = worker.stream_choice
    decision = Decision(STREAM, "on") if choice is None else choice.decide(one_way, r.req.max_new_tokens)
    if choice is not None:
        worker.log.debug("stream_choice", request_id=r.req.request_id, mode=decision.mode, reason=decision.reason,
                         one_way_ms=round(one_way, 3),
                         chain_ms_per_token=_ms(choice.modelled(CHAIN, one_way, r.req.max_new_tokens)),
                         stream_ms_per_token=_ms(choice.modelled(STREAM, one_way, r.req.max_new_tokens)),
                         stream_floor_ms_per_token=_ms(choice.stream_floor(one_way, r.req.max_new_tokens)))
    if decision.mode != STREAM:
        return False
    shape = worker.cfg.stream_tree
    widths = worker.width_choice
    if widths is not None:
        pick = widths.decide(one_way, r.req.max_new_tokens)
        shape = replace(shape, width=pick.width)
        worker.log.debug("stream_width", request_id=r.req.request_id, width=pick.width, reason=pick.reason,
                         one_way_ms=round(one_way, 3), **width_table(widths, one_way, r.req.max_new_tokens))
    run = StreamTreeRun(worker, r, live, shape, one_way)

    def finished(ms: float, res: StreamTreeResult, paid_ms: float) -> None:
        worker.delay.add(paid_ms)
        tokens = len(res.token_ids)
        if choice is not None:
            choice.observe(STREAM, ms, tokens, res.misses, paid_ms)
        if widths is not None:
            widths.observe(shape.width, ms, tokens, paid_ms, res.judged, res.covered)

    run.on_finish = finished
    await run.run()
    worker.log.info("request_done", request_id=r.req.request_id, rounds=0, tokens=len(r.out),
                    finish_reason=r.finish_reason, policy="stream-tree", retries=0)
    return True


def edge_delay_ms(worker: "EdgeWorker") -> float:
    """The one-way delay the edge measured (the median of its last rounds' network time and stream
    requests' message delays, `worker.delay`); before any measurement, the link's configured delay."""
    return worker.delay.ms if worker.delay.known else worker.channel.sample().one_way_ms


def observe_rounds(worker: "EdgeWorker", r: "EdgeRequest", rounds_ms: float) -> None:
    """A request served by rounds: its cost, for `--stream-tree auto` (at the delay its rounds measured)."""
    if worker.stream_choice is not None and r.policy_spec != "target-only":
        worker.stream_choice.observe(CHAIN, rounds_ms, len(r.out), r.round, worker.delay.ms)


def width_table(choice: WidthChoice, one_way_ms: float, new_tokens: int) -> dict[str, dict[str, float | None]]:
    """The `stream_width` event's model per width: ms/token (None: not run yet) and misses per token."""
    return {"ms_per_token": {str(w): _ms(choice.modelled(w, one_way_ms, new_tokens)) for w in choice.widths},
            "misses_per_token": {str(w): _ms(choice.misses_per_token(w)) for w in choice.widths}}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _done_fields(request_id: str, res: StreamTreeResult, last: Any) -> dict:
    return {"request_id": request_id, "tokens": len(res.token_ids), "finish_reason": res.finish_reason,
            "wall_ms": round(res.wall_s * 1e3, 3), "ms_per_token": round(res.ms_per_token, 3),
            "misses": res.misses, "round_trips_per_token": round(res.round_trips_per_token, 4),
            "judged": res.judged, "covered": list(res.covered),
            "expansions": res.expansions, "draft_forwards": res.draft_forwards, "nodes_sent": res.nodes_sent,
            "messages_sent": res.messages_sent, "resends": res.resends, "draft_ms": round(res.draft_ms, 3),
            "draft_real_ms": round(res.draft_real_ms, 3), "draft_overruns": res.draft_overruns,
            "verify_forwards": getattr(last, "forwards", 0), "nodes_verified": getattr(last, "verified", 0),
            "stale_groups": getattr(last, "stale", 0), "verify_ms": getattr(last, "verify_ms", 0.0)}
