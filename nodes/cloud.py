"""Cloud worker: the target model verifies drafts from many edges.

A thin wiring of the verifier's session table (`nodes.protocol.verifier_table`):
decode, `admit`, run the target when the table says so, `finish`, publish
every reply it returns. First rounds and context resends arrive on
`specstop.draft.<edge>` in queue group "verifiers"; the verdict names the
verifier and the edge sends later rounds to `specstop.draft.<edge>.<verifier>`
(sticky sessions); final drafts for every verifier on `specstop.end.<edge>`.
The edge id in the subject is the sender (the broker's permissions confine an
edge to its own): the table refuses a draft whose body names another edge. Model compute runs
on one worker thread so the event loop keeps receiving while a round computes
(inline while this verifier holds no other session: see WorkerBase.run_model).

Batching: rounds admitted close together (within `batch_wait_ms` of the first,
at most `max_batch`, sooner when every held session already has its round in
hand) run as one forward over their KV-cache slots (nodes/models/batch_verify.py);
each keeps its own draft length, sampling parameters, seed and verdict, and the
session table's exactly-once rules are untouched (a retry joins the round in
flight whether or not its batch is computing). The table hands a dropped
session's slot back (`release`).

Shutdown: leave the queue group (no new sessions), let the rounds in flight
finish (bounded), answer anything else `draining` so edges move elsewhere.

Liveness (`nodes.liveness`): every `heartbeat_s` the verifier publishes its `AliveMsg` (load:
sessions held; draining), so edges avoid it once it stalls; it hears the edges' heartbeats, and
an edge heard once and then silent for `liveness_window_s` loses all its sessions at once
(`session_end`, reason `edge_gone`) instead of holding them for the TTL.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from nodes.batcher import Batched, MicroBatcher
from nodes.config import CloudConfig
from nodes.device import DeviceProfile, Pacer
from nodes.liveness import Heartbeat
from nodes.models.batch_verify import BatchStats, BatchVerifier, JobResult, VerifyJob
from nodes.protocol.liveness import FORGET_S, PeerTable
from nodes.protocol.verifier_table import Admission, Compute, Outcome, Reply, SessionTable
from pipeline.transport.worker_base import WorkerBase
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import OVERLOADED, VOIDED, DraftMsg, ErrorMsg
from schemas.rounds import SamplingParams
from schemas.ahead import AHEAD_SCHEMA_VERSION, decode_ahead
from schemas.codec import unpack_map
from schemas.trees import TREE_SCHEMA_VERSION, decode_tree
from nodes.cloud_stream import StreamSessions
from schemas.stream_tree import STREAM_SCHEMA_VERSION, stream_version


class CloudWorker(WorkerBase):
    def __init__(self, nc: Client, model: Any, vocab_size: int, config: CloudConfig, limits: Limits, log: Any,
                 model_nice: int = 0, device: DeviceProfile | None = None):
        super().__init__(nc, log, "verify", config.max_in_flight, model_nice=model_nice)
        self.model, self.vocab, self.cfg, self.limits = model, vocab_size, config, limits
        self.device = device if device is not None and device.emulates_verify else None
        self.pacer = Pacer(self.device) if self.device else None
        # twice the session cap in slots: a session replaced while its round computes keeps its slot until then
        self.verifier = BatchVerifier(model, vocab_size, max_slots=max(1, config.max_sessions * 2),
                                      max_len=limits.max_context_tokens, max_bytes=config.slot_memory_mb << 20,
                                      use_slots=config.slot_cache, prefill_chunk=config.prefill_chunk,
                                      graphs=config.graphs, batch_invariant=config.batch_invariant)
        self.table = SessionTable(config.table(), limits, release=self.verifier.release)
        self.batcher: MicroBatcher[tuple[VerifyJob, tuple], tuple[JobResult, BatchStats, float]] = MicroBatcher(
            self._run_batch, config.max_batch, config.batch_wait_ms / 1e3, more_coming=self._more_coming,
            again=lambda r: r[0].again, share_key=lambda item: item[1][0])  # rounds shared fairly between edges
        self._queue_sub = None
        self.edges = PeerTable(config.liveness_window_s)
        self.heartbeat = Heartbeat(nc, log, limits, "verifier", config.verifier_id, "edge", self.edges,
                                   lambda: (len(self.table.sessions), self.table.draining, 0), self._on_tick,
                                   self.send_now, config.heartbeat_s)
        self.computing = 0  # rounds whose model compute has not finished (a replaced session's included)
        self.streams = StreamSessions(model, vocab_size, config.verifier_id, limits, log, self.send_now,  # v4
                                      config.max_sessions, config.session_ttl_s, enabled=config.stream_tree,
                                      device=self.device, fill=config.stream_fill)

    @property
    def sessions(self):
        return self.table.sessions

    @property
    def rounds(self) -> int:
        return self.table.rounds

    async def start(self) -> None:
        shared, sticky, end = (subjects.draft("*"), subjects.draft("*", self.cfg.verifier_id),
                               subjects.session_end("*"))
        self._queue_sub = await self.nc.subscribe(shared, queue=subjects.VERIFIER_QUEUE, cb=self._on_msg)
        self.subs.append(self._queue_sub)
        self.subs.append(await self.nc.subscribe(sticky, cb=self._on_msg))
        self.subs.append(await self.nc.subscribe(end, cb=self._on_msg_end))
        self.background.add(asyncio.create_task(self._expire_loop()))
        self.background.add(asyncio.create_task(self.streams.run_expiry()))
        self.subs.append(await self.heartbeat.subscribe())
        self.background.add(asyncio.create_task(self.heartbeat.run()))
        quota = self.table.cfg
        self.log.info("cloud_started", verifier_id=self.cfg.verifier_id, subjects=[shared, sticky, end],
                      model_nice=self.model_nice, max_sessions=self.cfg.max_sessions,
                      max_sessions_per_edge=quota.sessions_per_edge, max_rounds_per_edge=quota.rounds_per_edge,
                      device=self.device.to_dict() if self.device else None,
                      max_batch=self.cfg.max_batch, batch_wait_ms=self.cfg.batch_wait_ms,
                      slot_cache=self.verifier.why_not or "on", graphs=self.verifier.static is not None,
                      batch_invariant=self.cfg.batch_invariant, prefill_chunk=self.cfg.prefill_chunk)

    async def stop(self) -> None:
        self.table.begin_drain()
        await self.send_now(self.heartbeat.subject, self.heartbeat.beat())  # draining: edges look elsewhere now
        if self._queue_sub is not None:
            try:
                await self._queue_sub.unsubscribe()
            except Exception:
                pass
            self.subs = [s for s in self.subs if s is not self._queue_sub]
            self._queue_sub = None
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while self.computing and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.batcher.close()
        self.streams.close_all()
        await super().stop()
        self.log.info("cloud_drained", rounds=self.rounds, sessions=len(self.sessions),
                      batch_sizes=dict(sorted(self.batcher.sizes.items())))

    async def _on_msg(self, msg: Msg) -> None:
        received = time.perf_counter()
        if self.try_spawn(self._handle(msg, received)) is None:
            await self._send(msg.reply, ErrorMsg(OVERLOADED, f"verifier {self.cfg.verifier_id} has "
                                                             f"{self.max_in_flight} messages in hand"))
            self.log.warning(OVERLOADED, reason="messages in hand", subject=msg.subject)

    async def _on_msg_end(self, msg: Msg) -> None:
        """Handled as a task like every draft, so it stays behind drafts that arrived before it."""
        if self.try_spawn(self._on_end(msg)) is None and msg.reply:
            await self._send(msg.reply, ErrorMsg(OVERLOADED, f"verifier {self.cfg.verifier_id} is full"))

    async def _on_end(self, msg: Msg) -> None:
        """Broadcast final drafts (every verifier gets them): only `final` is taken here."""
        dm = await self._decode(msg, final_only=True)
        if dm is None:
            return
        adm = self.table.admit(dm, msg.reply, time.monotonic(),
                               sender=self._sender(msg.subject, subjects.END_PREFIX))
        await self._publish(adm.replies)
        if adm.event != "session_end" or adm.detail == "held":  # refusals, and the verifier that held it
            self._log_admission(dm, adm, msg.subject)

    async def _send(self, to: str | None, m: Any) -> None:
        if to:
            await self.send_now(to, encode(m))

    async def _decode(self, msg: Msg, final_only: bool = False) -> DraftMsg | None:
        """The draft, or None after answering (and logging) why it cannot be used."""
        dm, _, _ = await self._decode_round(msg, final_only)
        return dm

    async def _decode_round(self, msg: Msg, final_only: bool = False) -> tuple[DraftMsg | None, tuple | None,
                                                                              int | None]:
        """(the draft, a tree's parents or None, a round drafted ahead's assumed token or None), or
        (None, None, None) after answering (and logging) why it cannot be used. A message the chain
        codec refuses for its version is read as a tree draft or a round drafted ahead, by its version."""
        assumed = None
        try:
            try:
                dm: DraftMsg = decode(msg.data, self.limits, expect=(DraftMsg,))
                parents = None
            except SchemaError as exc:
                if exc.code != "version" or final_only:
                    raise
                version = unpack_map(msg.data, self.limits).get("v")
                if version == AHEAD_SCHEMA_VERSION and self.cfg.max_ahead > 0:
                    ahead = decode_ahead(msg.data, self.limits)
                    if ahead.parents is not None and not self.cfg.trees:
                        raise SchemaError(f"verifier {self.cfg.verifier_id} takes no tree drafts (schema v2): start "
                                          f"the edge without --tree", "version")
                    dm, parents, assumed = ahead.draft, ahead.parents, ahead.assumed_next
                elif version == TREE_SCHEMA_VERSION and self.cfg.trees:
                    tree = decode_tree(msg.data, self.limits)
                    dm, parents = tree.to_draft_msg(), tuple(tree.parents)
                else:
                    raise SchemaError(f"{exc} (verifier {self.cfg.verifier_id} takes chain drafts"
                                      f"{', tree drafts v2' if self.cfg.trees else ''}"
                                      f"{f', rounds drafted ahead v{AHEAD_SCHEMA_VERSION}' if self.cfg.max_ahead else ''}"
                                      f"; start the edge without "
                                      f"{'--ahead' if version == AHEAD_SCHEMA_VERSION else '--tree'})", "version")
            if final_only and not dm.final:
                raise SchemaError(f"{subjects.END_PREFIX}.<edge_id> takes final drafts only")
        except SchemaError as exc:
            await self._send(msg.reply, ErrorMsg(exc.code, str(exc)[:1000]))
            self.log.warning("bad_message", code=exc.code, error=str(exc)[:300], replied=bool(msg.reply),
                             subject=msg.subject)
            return None, None, None
        return dm, parents, assumed

    async def _handle(self, msg: Msg, received: float) -> None:
        if stream_version(msg.data, self.limits) == STREAM_SCHEMA_VERSION:  # the stream tree: nodes/cloud_stream.py
            await self.streams.on_message(msg.data, msg.reply, msg.subject)
            return
        dm, parents, assumed = await self._decode_round(msg)
        if dm is None:
            return
        adm = self.table.admit(dm, msg.reply, time.monotonic(),
                               sender=self._sender(msg.subject, subjects.DRAFT_PREFIX), parents=parents,
                               assumed_next=assumed)
        await self._publish(adm.replies)
        self._log_admission(dm, adm, msg.subject)
        if adm.compute is not None:
            await self._compute(adm.compute, received)

    @staticmethod
    def _sender(subject: str, prefix: str) -> str:
        """The edge id the subject carries; "" (matches no edge_id: refused) if it carries none."""
        return subjects.sender_of(subject, prefix) or ""

    async def _compute(self, job: Compute, received: float) -> None:
        self.computing += 1
        try:
            await self._verify(job, received)
        finally:
            self.computing -= 1
        await self._next_ahead(job)

    async def _next_ahead(self, job: Compute) -> None:
        """The round drafted ahead that waited behind this one: started as its own task (a long run of
        kept rounds must not nest), or answered `voided` / why not, without compute."""
        adm = self.table.take_ahead(job.session, time.monotonic())
        if adm.event == "none":
            return
        await self._publish(adm.replies)
        if adm.compute is None:
            self.log.debug("ahead_dropped", request_id=job.msg.request_id, code=adm.event, detail=adm.detail[:300],
                           edge_id=job.msg.edge_id)
            return
        self.log.debug("ahead_started", request_id=job.msg.request_id, round=adm.compute.msg.round,
                       edge_id=job.msg.edge_id)
        if self.try_spawn(self._compute(adm.compute, time.perf_counter())) is None:
            # cannot happen below max_in_flight tasks; the session must not stay in flight forever
            await self._publish(self.table.finish(adm.compute.session, RuntimeError("verifier full"), None,
                                                  time.monotonic()))

    def _more_coming(self) -> bool:
        """Whether a held session has no round in hand (its next draft may arrive any moment)."""
        return any(s.in_flight is None for s in self.sessions.values())

    async def _run_batch(self, items: list[tuple[VerifyJob, tuple]]) -> list[tuple[JobResult, BatchStats, float,
                                                                                  float | None]]:
        alone = len(items) == 1 and not self.table.others_live(items[0][1])
        (results, stats), started = await self.run_model(self.verifier.run, [job for job, _ in items], alone=alone)
        device_ms = None
        if self.pacer is not None and self.pacer.profile.shared:  # one device: the next batch waits for it
            longest = max(len(job.draft) for job, _ in items)
            device_ms, pad = self.pacer.verify(longest, (time.perf_counter() - started) * 1e3)
            if pad > 0:
                await asyncio.sleep(pad / 1e3)
        if len(items) > 1:
            self.log.debug("verify_batch", size=len(items), slot_rows=stats.slot_rows, per_request=stats.per_request,
                           failed=stats.failed, forward_ms=round(stats.forward_ms, 3), prep_ms=round(stats.prep_ms, 3),
                           kv_ms=round(stats.kv_ms, 3), accept_ms=round(stats.accept_ms, 3),
                           prefill_ms=round(stats.prefill_ms, 3), prefill_tokens=stats.prefill_tokens, prefilling=stats.prefilling,
                           per_request_ms=round(stats.per_request_ms, 3),
                           total_ms=round(stats.total_ms, 3), padded_tokens=stats.padded_tokens,
                           real_tokens=stats.real_tokens)
        return [(r, stats, started, device_ms) for r in results]

    async def _verify(self, job: Compute, received: float) -> None:
        s, dm = job.session, job.msg
        context = list(s.tokens) if job.rebuild else None
        draft = dm.to_draft()
        if job.parents is not None:
            draft.parents = list(job.parents)
        vjob = VerifyJob(s.state, context, draft, SamplingParams(dm.temperature, dm.top_p))
        try:
            done: Batched = await self.batcher.submit((vjob, s.key))
            res, stats, started, device_ms = done.result
            error = res.error
        except Exception as exc:  # a bug: the waiters hear of it, the worker keeps serving
            res, error = None, exc
        except asyncio.CancelledError:  # never leave the session in flight: expiry skips those forever
            self.table.finish(s, RuntimeError("verification cancelled"), None, time.monotonic())
            raise
        if error is not None:  # this round's session is dropped (its state released); the edge resends
            code = getattr(error, "code", None)
            if code is None:
                self.log.error("internal_error", request_id=dm.request_id, error=repr(error)[:300])
            else:
                self.log.warning(code, code=code, request_id=dm.request_id, error=str(error)[:300])
            await self._publish(self.table.finish(s, error, res.state if res else None, time.monotonic()))
            return
        state, v, prefill_ms = res.state, res.verdict, res.prefill_ms
        queue_ms = (started - received) * 1e3
        real_ms = emulated_ms = v.verify_ms
        if device_ms is not None:  # one shared device: its batch took this long; waiting for it is queueing
            emulated_ms = device_ms
        elif self.pacer is not None:  # the device's forward takes this long; prefill runs at our speed
            emulated_ms, pad = self.pacer.verify(len(dm.tokens), v.verify_ms + queue_ms)
            queue_ms = 0.0  # a virtual device per session: waiting for this CPU is inside the device time
            if pad > 0:
                await asyncio.sleep(pad / 1e3)
        outcome = Outcome(v.accepted, v.next_token, emulated_ms + prefill_ms, queue_ms,
                          real_ms + prefill_ms if self.pacer is not None else None, v.path)
        replies = self.table.finish(s, outcome, state, time.monotonic())
        await self._publish(replies)
        self.log.debug("verify", request_id=dm.request_id, round=dm.round, attempt=dm.attempt, edge_id=dm.edge_id,
                       verifier_id=self.cfg.verifier_id, draft_length=len(dm.tokens), accepted=v.accepted,
                       tree=job.parents is not None, ahead=job.ahead,
                       verify_ms=round(emulated_ms, 3), verify_real_ms=round(real_ms, 3), prefill_ms=round(prefill_ms, 3),
                       queue_ms=round(queue_ms, 3),
                       context_resent=job.rebuild and dm.round > 0, context_len=len(s.tokens),
                       sessions=len(self.sessions), waiters=len(replies), batch_size=done.size,
                       batch_wait_ms=round(done.wait_ms, 3), forward_ms=round(stats.forward_ms, 3),
                       bookkeeping_ms=round(stats.prep_ms + stats.kv_ms, 3))

    async def _publish(self, replies: list[Reply]) -> None:
        for r in replies:
            await self._send(r.to, r.msg)

    def _log_admission(self, dm: DraftMsg, adm: Admission, subject: str) -> None:
        if adm.event == "compute":
            if adm.evicted is not None:
                self.log.info("session_evicted", edge_id=adm.evicted[0], request_id=adm.evicted[1],
                              for_request=dm.request_id, sessions=len(self.sessions))
            return
        fields = dict(request_id=dm.request_id, round=dm.round, attempt=dm.attempt, edge_id=dm.edge_id,
                      subject=subject, sessions=len(self.sessions))
        if adm.event in ("joined_in_flight", "verdict_resent", "queued_ahead", VOIDED):
            self.log.debug(adm.event, **fields)
        elif adm.event == "session_end":
            self.log.info("session_end", reason="final", held=adm.detail == "held", **fields)
        else:
            self.log.warning(adm.event, code=adm.event, error=adm.detail[:300], replied=bool(adm.replies), **fields)

    async def _on_tick(self, now: float, since: float, beat: bytes) -> None:
        """Free the sessions of every edge whose heartbeats stopped (never one we never heard)."""
        for edge_id, silent_s in self.edges.newly_gone(now, since):
            keys = self.table.drop_edge(edge_id)
            self.streams.drop_edge(edge_id)
            for _, rid, _ in keys:
                self.log.info("session_end", request_id=rid, edge_id=edge_id, reason="edge_gone",
                              sessions=len(self.sessions))
            self.log.warning("peer_gone", role="edge", node_id=edge_id, silent_s=round(silent_s, 3),
                             sessions_freed=len(keys))
        self.edges.prune(now, FORGET_S)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.cfg.session_ttl_s / 2))
            for edge_id, rid, _ in self.table.expire(time.monotonic()):
                self.log.info("session_end", request_id=rid, edge_id=edge_id, reason="ttl",
                              sessions=len(self.sessions))
