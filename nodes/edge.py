"""Edge worker: drafts locally, verifies remotely, streams tokens to the client.

A thin wiring of the round protocol (`nodes.protocol`, where every rule of a
round lives: `request`, `acting`, `timing`, `resume`, `policy_sync`,
`admission`, `placement`, `liveness`): decode, admit, hand the request's
rounds to `EdgeRequest`, draft through the draft batcher
(`nodes.draft_batcher`: rounds of concurrent requests draft as one batch on
the draft model's slot cache, on the model thread, or inline when it is the
only request: see WorkerBase.run_model), sleep the emulated link, publish
what the protocol says. Every bound is
checked where a request is admitted (`protocol.admission`); a full edge
answers `overloaded` at once. Requests end by finishing, by failing with an
error that names what went wrong, by the client's cancel or deadline, or by
the edge's shutdown (drained within `drain_timeout_s`); in every case the
client gets a terminal message and every verifier that held the request's
session gets a final draft.

Liveness (`nodes.liveness`): every `heartbeat_s` the edge publishes its `AliveMsg` and forwards
it to every live request's client that it has sent nothing for that long (a client that hears
nothing for a few seconds knows the edge is gone); it hears the verifiers' heartbeats, so
placement avoids a stalled or draining verifier, a timed-out round is retried on another live
one, and a round whose verifier's heartbeat stopped moves to another before its timeout.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError, NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from control import ControlError, RoundContext
from control.stream_choice import StreamChoice
from control.stream_width import WidthChoice
from control.trees import Tree
from nodes.detokenize import IncrementalDetokenizer
from nodes.device import DeviceProfile, Pacer
from nodes.config import EdgeConfig
from nodes.draft_batcher import DraftBatcher, Drafted
from nodes.edge_ahead import AheadRounds
from nodes.edge_stream import observe_rounds, run_stream_tree
from nodes.link import Channel, ConstChannel, LinkTimer
from nodes.liveness import Heartbeat
from nodes.models.head import head_for
from nodes.models.loading import ModelPair
from nodes.models.sessions import DraftSession
from nodes.models.tree_verify import TreeDraftSession
from nodes.policy_book import PolicyBook
from nodes.protocol import policy_sync
from nodes.protocol.acting import HeadSlot, plan_round
from nodes.protocol.calibration import PROMPT as CALIBRATION_PROMPT, REQUEST_PREFIX as CALIBRATION_PREFIX
from nodes.protocol.calibration import CalibrationSweep, usable as calibration_usable
from nodes.protocol.admission import EarlyCancels, admit_generate, check_prompt_tokens, deadline_s
from nodes.protocol.liveness import FORGET_S, HolderWatch, PeerTable, keepalive_due
from nodes.protocol.placement import Placement
from nodes.protocol.request import Accepted, EdgeRequest, Failed, RoundRecord, Send
from nodes.protocol.resume import RecentStreams, held_state
from nodes.protocol.tree import draft_steps, round_tokens
from nodes.protocol.tree_shape import TreeShaper
from nodes.protocol.timing import DelayEstimate, measured_round_times, one_way_delay_ms, round_log_fields, stall_time_ms
from pipeline.transport.confirm import confirm_sent
from pipeline.transport.jetstream import bucket_keys, ensure_stream, jetstream_of
from pipeline.transport.timing_outbox import TimingOutbox
from pipeline.transport.worker_base import WorkerBase
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import (
    BAD_MESSAGE, CANCELLED, DEADLINE, INTERNAL, NO_VERIFIER, UNAVAILABLE, AckMsg, CancelMsg, ErrorMsg, GenerateRequest,
    PolicyUpdate, ResumeMsg, TokenChunk, VerdictMsg,
)
from schemas.rounds import Draft
from schemas.trees import encode_round


class HolderGone(Exception):
    """The verifier a round waits on stopped sending heartbeats; `other` is alive to take it."""

    def __init__(self, other: str):
        super().__init__(other)
        self.other = other


class RoundFailed(RuntimeError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Live:
    """A request this edge holds: its task, the client's inbox, and why it was stopped (if it was)."""

    inbox: str | None
    task: asyncio.Task | None = None
    running: bool = False   # its task has begun (before that, cancelling it would skip its cleanup)
    started: bool = False   # it holds an active slot (before that, it is queued)
    stop_reason: tuple[str, str] | None = None
    request: EdgeRequest | None = field(default=None, repr=False)
    draft_session: DraftSession | None = field(default=None, repr=False)  # its slot goes back at the end
    tree_session: TreeDraftSession | None = field(default=None, repr=False)  # tree rounds' draft cache
    terminal: TokenChunk | ErrorMsg | None = None  # the stream's last message, kept to answer `resume`
    last_sent: float = field(default_factory=time.monotonic)  # the client last got something from us
    calibration: CalibrationSweep | None = field(default=None, repr=False)  # the edge's own start-up rounds


CALIBRATION_REQUESTS = 8  # start-up calibration requests at most (one usually times every length)
CALIBRATION_WAIT_S = 0.5  # the calibration's poll for a verifier heard (and for room beside clients' requests)
UNSUBSCRIBE_CONFIRM_S = 10.0  # Edge.stop waits this long for the broker to confirm it routes no request here


class EdgeWorker(WorkerBase):
    def __init__(self, nc: Client, pair: ModelPair, config: EdgeConfig, limits: Limits, log: Any,
                 channel: Channel | None = None, policies: PolicyBook | None = None, model_nice: int = 0,
                 device: DeviceProfile | None = None):
        # admission bounds live requests; tasks also count ones that are sending their last messages
        super().__init__(nc, log, "draft", 2 * (config.limits.max_active + config.limits.max_queued),
                         model_nice=model_nice)
        self.pair, self.cfg, self.limits = pair, config, limits
        self.channel = channel or ConstChannel(0.0)
        self.link = LinkTimer()
        self.device = device if device is not None and device.emulates_draft else None
        self.pacer = Pacer(self.device, config.seed) if self.device else None
        self.policies = policies or PolicyBook(config.max_length, config.seed)
        self.slots = asyncio.Semaphore(config.limits.max_active)
        self.live: dict[str, Live] = {}
        self.draining = False
        self.delay = DelayEstimate()
        self.trees = TreeShaper(config.tree, config.max_length, config.seed)  # `--tree auto` learns here
        self.timing_seq = 0
        self.completed = 0
        self.recent = RecentStreams()
        self._generate_subs: list = []
        self.early_cancels = EarlyCancels()
        self.heads = HeadSlot(lambda: head_for(pair))  # loaded at the first request that needs it
        self.drafter = DraftBatcher(self, pair.draft, pair.vocab_size, config.drafting, self._drafting_requests,
                                    lambda: len(self.tasks) <= 1, log)
        self.outbox = TimingOutbox(nc, jetstream_of(nc), log, config.edge_id)
        self.verifiers = PeerTable(config.liveness_window_s)
        self.placement = Placement(config.seed, peers=self.verifiers)
        self.heartbeat = Heartbeat(nc, log, limits, "edge", config.edge_id, "verifier", self.verifiers,
                                   self._alive_status, self._on_tick, self.send_now, config.heartbeat_s)
        self.holders: HolderWatch[asyncio.Future] = HolderWatch()  # rounds waiting, by who holds them
        shape = config.stream_tree
        self.stream_choice = StreamChoice() if shape is not None and shape.auto else None
        self.width_choice = WidthChoice(start=shape.width) if shape is not None and shape.width_auto else None

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._generate_subs = [
            await self.nc.subscribe(subjects.GENERATE, queue=subjects.EDGE_QUEUE, cb=self._on_generate),
            await self.nc.subscribe(subjects.generate(self.cfg.edge_id), cb=self._on_generate)]
        self.subs += self._generate_subs
        self.subs.append(await self.nc.subscribe(subjects.CANCEL, cb=self._on_cancel))
        self.subs.append(await self.nc.subscribe(subjects.RESUME, cb=self._on_resume))
        self.subs.append(await self.heartbeat.subscribe())
        self.background.add(asyncio.create_task(self.heartbeat.run()))
        self.outbox.start()
        if not self.policies.learn_locally:
            self.subs.append(await self.nc.subscribe(subjects.policy(self.cfg.edge_id), cb=self._on_policy))
            await self._restore_from_bucket()
            self.background.add(asyncio.create_task(self._resync_after_reconnect()))
        if self.cfg.calibrate_rounds:
            self.background.add(asyncio.create_task(self._calibrate()))
        self.log.info("edge_started", edge_id=self.cfg.edge_id, channel=self.channel.spec,
                      policy=self.cfg.default_policy, model_nice=self.model_nice,
                      max_active=self.cfg.limits.max_active, max_queued=self.cfg.limits.max_queued,
                      draft_slot_cache=self.drafter.why_not or "on", draft_max_batch=self.cfg.drafting.max_batch,
                      draft_batch_wait_ms=self.cfg.drafting.wait_ms,
                      device=self.device.to_dict() if self.device else None)

    async def stop(self) -> None:
        """Take no new requests; let running ones finish within the drain timeout; then stop the rest
        (the client gets an `unavailable` error, the verifier a final draft)."""
        self.draining = True
        await self.send_now(self.heartbeat.subject, self.heartbeat.beat())  # draining, said at once
        for sub in self._generate_subs:
            try:
                await sub.unsubscribe()
            except NatsError:
                pass
        await self._confirm_unsubscribed()
        self.subs = [s for s in self.subs if s not in self._generate_subs]
        for live in self.live.values():  # queued, not started: nothing to finish
            if not live.started and live.task is not None:
                self._stop_request(live, UNAVAILABLE, "edge shut down before the request started: send it again")
            elif live.calibration is not None:  # the edge's own start-up request: nobody waits for it
                self._stop_request(live, CANCELLED, "edge shut down during its calibration")
        tasks = [lv.task for lv in self.live.values() if lv.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.cfg.drain_timeout_s)
        for live in self.live.values():
            if live.task is not None and not live.task.done():
                self._stop_request(live, UNAVAILABLE, f"edge shut down after {self.cfg.drain_timeout_s:g} s of draining")
        tasks = [lv.task for lv in self.live.values() if lv.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self.drafter.close()
        await self.outbox.drain(timeout_s=5.0)
        await super().stop()
        self.log.info("edge_drained", completed=self.completed,
                      draft_batch_sizes=dict(sorted(self.drafter.sizes.items())),
                      timing_stored=self.outbox.stored, timing_plain=self.outbox.plain,
                      timing_dropped=self.outbox.dropped, timing_unsent=self.outbox.waiting)

    async def _confirm_unsubscribed(self) -> None:
        """Wait until the broker has processed our UNSUB (`confirm_sent`: a plain flush's PONG can come
        before it): from then on it routes no request here, and a client sending one gets
        `no_responders` at once instead of a silent timeout. On a loaded machine a round trip can take
        seconds, so it is retried for up to UNSUBSCRIBE_CONFIRM_S; a disconnected client needs none (a
        reconnect does not restore the subscription)."""
        deadline = time.monotonic() + UNSUBSCRIBE_CONFIRM_S
        while self.nc.is_connected:
            try:
                await confirm_sent(self.nc, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    self.log.warning("unsubscribe_unconfirmed", error=type(exc).__name__,
                                     waited_s=UNSUBSCRIBE_CONFIRM_S)
                    return

    # --- liveness ----------------------------------------------------------------------
    def _alive_status(self) -> tuple[int, bool, int]:
        """(live requests, draining, verifiers heard within the window) for our heartbeat."""
        return len(self.live), self.draining, len(self.verifiers.alive(time.monotonic(), self.heartbeat.since))

    async def _on_tick(self, now: float, since: float, beat: bytes) -> None:
        """Once per heartbeat: keep silent clients' streams alive, act on verifiers gone silent."""
        self.placement.since = since
        for live in list(self.live.values()):
            if live.inbox and live.terminal is None and keepalive_due(live.last_sent, now, self.cfg.heartbeat_s):
                live.last_sent = now
                await self.send_now(live.inbox, beat)
        for vid, silent_s in self.verifiers.newly_gone(now, since):
            waiting = self.holders.gone(vid)
            self.log.warning("peer_gone", role="verifier", node_id=vid, silent_s=round(silent_s, 3),
                             rounds_waiting=len(waiting))
            for fut in waiting:
                if not fut.done():
                    fut.set_result(vid)
        self.verifiers.prune(now, FORGET_S)

    def _watch_holder(self, verifier_id: str | None) -> asyncio.Future:
        """A future resolved when `verifier_id`'s heartbeat stops (None: a round sent to the queue
        group, which any verifier may have taken: resolved when any stops)."""
        fut = asyncio.get_running_loop().create_future()
        self.holders.add(verifier_id, fut)
        return fut

    def _unwatch(self, verifier_id: str | None, fut: asyncio.Future) -> None:
        self.holders.discard(verifier_id, fut)
        if not fut.done():
            fut.cancel()

    async def _ask(self, r: EdgeRequest, step: Any) -> Msg:
        """One attempt's request. Raises `HolderGone` when its verifier's heartbeat stops first (for a
        queue-group attempt: any verifier's, it may be the one that took it) and another live verifier
        can take the round: with the context it builds the session, or joins the round if it is the
        one computing it. With no other verifier known, a plain request (no overhead)."""
        holder = r.verifier
        if self.placement.elsewhere(holder, time.monotonic()) is None:
            return await self.nc.request(step.subject, encode_round(step.msg, r.tree_parents), timeout=step.timeout_s)
        gone = self._watch_holder(holder)
        ask = asyncio.ensure_future(self.nc.request(step.subject, encode_round(step.msg, r.tree_parents),
                                                    timeout=step.timeout_s))
        try:
            await asyncio.wait({ask, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not ask.done():
                other = self.placement.elsewhere(holder, time.monotonic())
                if other is not None:
                    raise HolderGone(other)
                await asyncio.wait({ask})  # nobody to move to after all: wait out the timeout
            return ask.result()
        finally:
            self._unwatch(holder, gone)
            if not ask.done():
                ask.cancel()

    # --- policy updates --------------------------------------------------------------
    async def _on_policy(self, msg: Msg) -> None:
        try:
            upd: PolicyUpdate = decode(msg.data, self.limits, expect=(PolicyUpdate,))
            spec = policy_sync.spec_of(upd, self.cfg.edge_id, self.policies)
            confirmed = self.policies.needs_confirmation(spec, upd.version) and await self._bucket_holds(spec, upd)
            self.policies.apply_update(spec, upd.version, upd.snapshot, confirmed=confirmed)
        except (SchemaError, ControlError) as exc:
            self.log.warning("policy_update_refused", error=str(exc)[:300], subject=msg.subject,
                             kept_versions=dict(self.policies.versions))
            if msg.reply:
                await self.send_now(msg.reply, encode(ErrorMsg(getattr(exc, "code", BAD_MESSAGE), str(exc)[:300])))
            return
        self.log.info("policy_update", policy=upd.policy, policy_version=upd.version, confirmed=confirmed)
        if msg.reply:
            await self.send_now(msg.reply, encode(AckMsg(self.cfg.edge_id, "policy_update")))

    async def _bucket_holds(self, spec: str, upd: PolicyUpdate) -> bool:
        """Whether the controller's bucket holds exactly this version (the controller wrote it)."""
        try:
            kv = await jetstream_of(self.nc).key_value(subjects.POLICY_BUCKET)
            stored = decode((await kv.get(subjects.policy_key(self.cfg.edge_id, spec))).value, self.limits,
                            expect=(PolicyUpdate,))
        except Exception:  # no bucket, no key, broker away, or a bad entry: not confirmed
            return False
        return policy_sync.bucket_confirms(stored, upd)

    async def _restore_from_bucket(self) -> None:
        """Resume from the controller's latest snapshots (if any): the bucket is authoritative."""
        try:
            js = jetstream_of(self.nc)
            kv = await js.key_value(subjects.POLICY_BUCKET)
            keys = await bucket_keys(js, self.cfg.edge_id)
        except Exception:  # no JetStream, no bucket yet, or no keys: act on the defaults
            return
        for key in keys:
            try:
                upd = decode((await kv.get(key)).value, self.limits, expect=(PolicyUpdate,))
                if not policy_sync.restore(upd, self.cfg.edge_id, self.policies):
                    continue
                self.log.info("policy_update", policy=upd.policy, policy_version=upd.version, source="bucket")
            except (KeyNotFoundError, KeyDeletedError):
                continue  # deleted (a listed key may hold only its delete marker)
            except Exception as exc:
                self.log.warning("policy_update_refused", error=str(exc)[:300], source="bucket", key=key)

    async def _resync_after_reconnect(self) -> None:
        """After a reconnect (a broker restart) updates may have been missed: read the bucket again,
        and re-create the timing stream if the broker came back without it (its events would be lost
        until the controller returns)."""
        seen = self.nc.stats.get("reconnects", 0)
        while True:
            await asyncio.sleep(1.0)
            now = self.nc.stats.get("reconnects", 0)
            if now != seen and self.nc.is_connected:
                seen = now
                try:
                    await ensure_stream(jetstream_of(self.nc), update=False)
                except Exception as exc:  # no JetStream on this broker: the controller cannot run either
                    self.log.warning("stream_check_failed", error=type(exc).__name__)
                await self._restore_from_bucket()

    def _link_hint(self, code: str) -> str:
        """An edge on a leaf node reaches every verifier through the leaf's link to the hub: when none
        answered, say that the link may be what is down (a client cannot see the link)."""
        if code != NO_VERIFIER or not getattr(self.nc, "specstop_js_domain", None):
            return ""
        return (f"; edge {self.cfg.edge_id} reaches verifiers through its leaf node's link to the hub: "
                "check that link (leaf server log: 'Leafnode connection')")

    # --- admission ---------------------------------------------------------------------
    async def _refuse(self, msg: Msg, code: str, text: str, request_id: str | None = None) -> None:
        if msg.reply:
            await self.send_now(msg.reply, encode(ErrorMsg(code, text[:1000], request_id)))
        if code == CANCELLED:  # the client's own cancel, already logged as request_cancelled: no warning
            return
        self.log.warning("refused" if code not in (BAD_MESSAGE, "too_large", "version") else "bad_message",
                         code=code, error=text[:300], request_id=request_id, replied=bool(msg.reply),
                         subject=msg.subject)

    async def _on_generate(self, msg: Msg) -> None:
        try:
            req: GenerateRequest = decode(msg.data, self.limits, expect=(GenerateRequest,))
            spec = self.policies.canonical(req.policy or self.cfg.default_policy)  # before any work
            self.heads.check(self.policies.get(spec))
        except (SchemaError, ControlError) as exc:
            await self._refuse(msg, getattr(exc, "code", BAD_MESSAGE), str(exc))
            return
        if self.early_cancels.take(req.request_id, msg.reply, time.monotonic()):
            self.log.info("request_cancelled", request_id=req.request_id, reason="cancelled before it arrived")
            await self._refuse(msg, CANCELLED, "cancelled by the client before the request arrived", req.request_id)
            return
        refusal = admit_generate(req, self.cfg.limits, len(self.live), self.draining, req.request_id in self.live)
        if refusal is not None:
            await self._refuse(msg, refusal.code, refusal.message, req.request_id)
            return
        live = Live(msg.reply)
        self.live[req.request_id] = live
        live.task = self.try_spawn(self._serve(req, live, spec))
        if live.task is None:  # cannot happen while max_in_flight >= the admission bound; answer anyway
            del self.live[req.request_id]
            await self._refuse(msg, "overloaded", "edge is full", req.request_id)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            c: CancelMsg = decode(msg.data, self.limits, expect=(CancelMsg,))
        except SchemaError as exc:
            await self._refuse(msg, exc.code, str(exc))
            return
        live = self.live.get(c.request_id)
        held = live is not None and live.inbox == c.inbox and live.task is not None
        if held:
            self._stop_request(live, CANCELLED, f"cancelled by the client ({c.reason[:64]})")
            # a client that stops at a stop sequence has its answer: a normal end, not a cancellation
            self.log.info("request_finished" if c.reason == "stop" else "request_cancelled", request_id=c.request_id,
                          reason=c.reason[:64])
        elif c.request_id not in self.recent:  # not finished here either: its generate may still be on its way
            self.early_cancels.add(c.request_id, c.inbox, time.monotonic())
        if msg.reply:
            await self.send_now(msg.reply, encode(AckMsg(c.request_id, "cancelled" if held else "not_held")))

    @staticmethod
    def _stop_request(live: Live, code: str, text: str) -> None:
        """Stop a request with a reason its client will read. A task that has not begun is not
        cancelled (its cleanup would never run): it sees the reason as its first step."""
        live.stop_reason = (code, text)
        if live.running and live.task is not None:
            live.task.cancel()

    async def _on_resume(self, msg: Msg) -> None:
        """A client that may have missed chunks gets the stream's state (or its last message again)."""
        try:
            c: ResumeMsg = decode(msg.data, self.limits, expect=(ResumeMsg,))
        except SchemaError as exc:
            await self._refuse(msg, exc.code, str(exc))
            return
        state = self._stream_state(c)
        if state is not None:
            await self.send_now(c.inbox, encode(state))
            self.log.info("stream_resumed", request_id=c.request_id, seq=getattr(state, "seq", None))
        elif (live := self.live.get(c.request_id)) is not None and live.inbox == c.inbox:
            live.last_sent = time.monotonic()  # held, nothing streamed yet: a sign of life is the answer
            await self.send_now(c.inbox, self.heartbeat.beat())
        if msg.reply:
            await self.send_now(msg.reply, encode(AckMsg(c.request_id, "resumed" if state else "not_held")))

    def _stream_state(self, c: ResumeMsg) -> TokenChunk | ErrorMsg | None:
        live = self.live.get(c.request_id)
        if live is not None and live.inbox == c.inbox:
            return held_state(c.request_id, live.request, live.terminal)
        return self.recent.answer(c.request_id, c.inbox)

    # --- one request -------------------------------------------------------------------
    async def _serve(self, req: GenerateRequest, live: Live, spec: str) -> None:
        live.running = True
        limit = deadline_s(req, self.cfg.limits)
        deadline = asyncio.timeout(limit)
        try:
            if live.stop_reason is not None:  # stopped before it began
                raise asyncio.CancelledError
            async with deadline:
                async with self.slots:
                    live.started = True
                    live.request = await self._open(req, spec)
                    await self._rounds(live.request, live)
            self.completed += live.calibration is None
        except TimeoutError as exc:
            if not deadline.expired():
                await self._fail(req, live, INTERNAL, f"request failed: {type(exc).__name__}")
            else:
                await self._fail(req, live, DEADLINE, f"request passed its deadline of {limit:g} s")
        except asyncio.CancelledError:
            code, text = live.stop_reason or (UNAVAILABLE, "edge stopped the request")
            await self._fail(req, live, code, text)
        except RoundFailed as exc:
            await self._fail(req, live, exc.code, str(exc))
        except Exception as exc:  # a bug must not take the worker down: report it, keep serving others
            await self._fail(req, live, INTERNAL, f"request failed: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            self.live.pop(req.request_id, None)
            self.recent.remember(req.request_id, live.inbox, live.terminal, live.started, time.monotonic())
            if live.request is not None:
                for subject, final in live.request.final_messages():
                    await self.send_now(subject, encode(final))

    async def _fail(self, req: GenerateRequest, live: Live, code: str, text: str) -> None:
        if live.terminal is not None:  # the stream already ended (its last chunk went out): one end only
            self.log.info("stopped_after_done", request_id=req.request_id, code=code)
            return
        if code != CANCELLED:  # the client's cancel was logged when it came (request_cancelled / _finished)
            self.log.warning("calibration_request_failed" if live.calibration is not None else "request_failed",
                             request_id=req.request_id, code=code, error=text[:300])
        live.terminal = ErrorMsg(code, text[:1000], req.request_id)
        if live.inbox:
            live.last_sent = time.monotonic()
            await self.send_now(live.inbox, encode(live.terminal))

    async def _open(self, req: GenerateRequest, spec: str) -> EdgeRequest:
        tok = self.pair.tokenizer
        prompt = list(req.prompt_ids) if req.prompt_ids else tok.encode(req.prompt, add_special_tokens=False)
        refusal = check_prompt_tokens(len(prompt), self.cfg.limits, req.max_new_tokens)
        if refusal is not None:
            raise RoundFailed(refusal.code, refusal.message)
        r = EdgeRequest(req, prompt, self.cfg.rules(), spec, self.pair.eos_ids,
                        IncrementalDetokenizer(tok, self.pair.eos_ids))
        target = self.placement.choose(time.monotonic()) if self.cfg.place_sessions else None
        if target is not None:
            r.place(target)
        return r

    def _drafting_requests(self) -> int:
        """Requests that hold an active slot and may ask to draft (the draft batcher waits for no more)."""
        return sum(1 for lv in self.live.values() if lv.started and lv.request is not None and not lv.request.done)

    async def _rounds(self, r: EdgeRequest, live: Live) -> None:
        try:
            await self._round_loop(r, live)
        finally:
            await self.drafter.release(live.draft_session)

    async def _round_loop(self, r: EdgeRequest, live: Live) -> None:
        if self.cfg.stream_tree is not None and await run_stream_tree(self, r, live):  # nodes/edge_stream.py
            return
        chain_ms = 0.0  # the rounds' summed time (edge --stream-tree auto learns the chain's cost from it)
        if self.cfg.ahead > 1:  # rounds in flight: nodes/edge_ahead.py drives the same protocol, R rounds at once
            await AheadRounds(self, r, live).run()
            return
        draft_model: DraftSession | None = None  # prefilled at the first drafted round (never for target-only)
        while not r.done:
            if live.stop_reason is not None:  # a cancel can be lost: Python 3.11's wait_for (inside nats-py's
                raise asyncio.CancelledError  # request) swallows one that races its reply; the reason is not lost
            if live.calibration is not None and live.calibration.done:
                break  # its token budget assumed every draft accepted: the sweep ends before it, mostly
            sample = self.channel.sample()
            acting = plan_round(r, *((live.calibration, 0) if live.calibration is not None
                                     else self.policies.acting(r.policy_spec)),
                                RoundContext(self.delay.ms, sample.state), self.heads, self.policies.fallback)
            if acting.error is not None:  # a policy that cannot choose must not fail the request
                self.log.warning("policy_error", policy=r.policy_spec, error=acting.error)
            policy, plan = acting.policy, acting.plan
            if self.cfg.tree is not None:
                if live.tree_session is None:  # prefilled before the round's clock starts, as a chain's
                    live.tree_session, _ = await self.run_model(TreeDraftSession, self.pair.draft, r.context,
                                                                self.pair.vocab_size, alone=len(self.tasks) <= 1)
            elif plan.length and draft_model is None:
                draft_model = live.draft_session = await self.drafter.open(r.context, r.params)
            t0 = time.perf_counter()
            drafted = None
            if live.tree_session is not None:
                d, edge_queue_ms = await self._draft_tree(r, live.tree_session, plan.seed), 0.0
            elif plan.length:
                stop, hidden = self.heads.stop_rule(policy, plan.context)
                drafted = await self.drafter.draft(draft_model, plan.length, plan.seed, stop, hidden)
                d, edge_queue_ms = drafted.draft, drafted.queued_ms
                d.stop_scores = getattr(stop, "scores", None) or None
            else:
                d, edge_queue_ms = Draft([], plan.seed), 0.0
            draft_real_ms = await self._pace(d, edge_queue_ms)
            verdict, link_ms, stall_ms = await self._exchange(r, d, sample)
            times = measured_round_times((time.perf_counter() - t0) * 1e3, d.draft_ms, edge_queue_ms, link_ms,
                                         stall_ms, draft_real_ms)
            chain_ms += times.round_ms
            self.placement.observe(verdict.verifier_id, verdict.queue_ms, time.monotonic())
            if draft_model is not None:
                await self.drafter.apply(draft_model, verdict.to_verdict())
            if live.tree_session is not None:
                await self.run_model(live.tree_session.apply, round_tokens(d.tokens, verdict.to_verdict()),
                                     alone=len(self.tasks) <= 1)
            self.timing_seq += 1
            rec = r.complete(verdict, times, sample.state, sample.one_way_ms, self.timing_seq)
            if d.parents is not None:  # a first round's or a resend's verify also prefilled the context
                self.trees.observe(d.parents, list(verdict.path or []), d.draft_ms, verdict.verify_ms,
                                   prefilled=rec.timing.round == 0 or rec.timing.context_resent)
            self.delay.add(one_way_delay_ms(rec.timing.network_ms))
            if live.calibration is not None:
                self._calibrated(live.calibration, rec)
            elif self.policies.learn_locally and policy.learns and d.parents is None:  # else the controller learns
                policy.observe(rec.outcome)
            await self._deliver(live, rec, _draft_batch_fields(drafted))
        observe_rounds(self, r, chain_ms)
        # a calibration request is not a served one (the metrics count `request_done`)
        self.log.info("calibration_request_done" if live.calibration is not None else "request_done",
                      request_id=r.req.request_id, rounds=r.round, tokens=len(r.out),
                      finish_reason=r.finish_reason, policy=r.policy_spec, retries=r.retries)

    async def _deliver(self, live: Live, rec: RoundRecord, log_fields: dict) -> None:
        """An applied round's chunk to the client, its log line and its timing event."""
        if rec.done:
            live.terminal = rec.chunk
        if live.inbox:
            live.last_sent = time.monotonic()
            await self.send_now(live.inbox, encode(rec.chunk))
        self.log.debug("calibration_round" if rec.timing.calibration else "round",  # analysis reads served rounds
                       **round_log_fields(rec.timing), **log_fields)
        self.outbox.put(subjects.timing(self.cfg.edge_id), encode(rec.timing))

    def _calibrated(self, sweep: CalibrationSweep, rec: RoundRecord) -> None:
        """A calibration round: its event says so (the controller then calibrates instead of observing);
        a usable one counts toward the sweep and, learning locally, goes to every policy."""
        rec.timing.calibration = True
        if calibration_usable(rec.timing):
            sweep.record(rec.timing.length, rec.outcome.compute_ms)
            if self.policies.learn_locally:
                self.policies.calibrate(rec.timing.length, rec.outcome.compute_ms)

    async def _calibrate(self) -> None:
        """The start-up calibration (nodes/protocol/calibration.py): requests of the edge's own, served
        beside clients' (no inbox, each a worker task as theirs are), once a verifier is heard, until every
        length has its timed rounds or CALIBRATION_REQUESTS requests were tried."""
        sweep = CalibrationSweep(self.cfg.max_length, self.cfg.calibrate_rounds)
        spec = self.policies.canonical(self.cfg.default_policy)
        prompt_len = len(self.pair.tokenizer.encode(CALIBRATION_PROMPT, add_special_tokens=False))
        room = self.cfg.limits.max_context_tokens
        t0, requests, why = time.monotonic(), 0, ""
        while not sweep.done and requests < CALIBRATION_REQUESTS:
            while not self.draining and not self.verifiers.usable(time.monotonic()):  # a verifier that starts
                await asyncio.sleep(CALIBRATION_WAIT_S)  # later still gets a calibration: none is tried before
            budget = min(sweep.tokens_left(), self.cfg.limits.max_new_tokens,
                         room - prompt_len if room is not None else sweep.tokens_left())
            if self.draining or budget < 2:
                why = "draining" if self.draining else "no room in the model's context"
                break
            rid = f"{CALIBRATION_PREFIX}{self.cfg.edge_id}-{uuid.uuid4().hex[:12]}"
            req = GenerateRequest(rid, prompt=CALIBRATION_PROMPT, seed=self.cfg.seed + requests, policy=spec,
                                  max_new_tokens=budget)
            live = Live(None, calibration=sweep)
            live.task = self.try_spawn(self._serve(req, live, spec))
            if live.task is None:  # the edge is full of clients' requests: try again later
                await asyncio.sleep(CALIBRATION_WAIT_S)
                continue
            self.live[rid] = live
            requests += 1
            await asyncio.wait([live.task])
        self.log.info("calibration_done", complete=sweep.done, rounds_per_length=sweep.timed,
                      compute_ms=sweep.means(), requests=requests, policy=spec, stopped=why or None,
                      learned_by="edge" if self.policies.learn_locally else "controller",
                      elapsed_s=round(time.monotonic() - t0, 3))

    async def _draft_tree(self, r: EdgeRequest, session: TreeDraftSession, seed: int) -> Draft:
        """A tree round's draft, its shape from `cfg.tree` (nodes/protocol/tree_shape.TreeShaper); an
        empty draft when only the target's own token is still wanted."""
        shape = self.trees.choose(self.delay.ms, r.req.max_new_tokens - len(r.out))
        if shape is None:
            return Draft([], seed)
        d, _ = await self.run_model(session.propose, shape, seed, alone=len(self.tasks) <= 1)
        return d

    async def _pace(self, d: Draft, queued_ms: float) -> float | None:
        """With device emulation: wait until the device would have finished drafting (counted from
        when the round asked for the model); the draft then reports the device's time and this
        returns what this machine spent computing (None without emulation)."""
        if self.pacer is None:
            return None
        real = d.draft_ms
        d.draft_ms, pad = self.pacer.draft(draft_steps(d), real + queued_ms)
        if pad > 0:
            await asyncio.sleep(pad / 1e3)
        return real

    async def _exchange(self, r: EdgeRequest, d: Draft, sample,
                        sent: tuple[Send, asyncio.Future, float] | None = None) -> tuple[VerdictMsg, float, float]:
        """Send the round until the protocol accepts a verdict: (verdict, link ms, stall ms). `sent`: a
        round whose first attempt is already out (its step, the attempt's (answer, link ms), when it began)."""
        step = r.send(d, time.monotonic()) if sent is None else sent[0]
        first = time.perf_counter() if sent is None else sent[2]
        while True:
            if step.wait_s:
                await asyncio.sleep(step.wait_s)
            began = time.perf_counter() if sent is None else first
            try:
                if sent is not None:
                    attempt, sent = sent[1], None
                    answer, link_ms = await attempt
                else:
                    link_ms = await self.link.sleep(sample.up_ms)
                    answer = await self._ask(r, step)
                    link_ms += await self.link.sleep(sample.down_ms)
            except HolderGone as moved:
                nxt = r.on_holder_gone(time.monotonic(), moved.other)
            except NoRespondersError:
                if r.verifier is not None:
                    self.placement.forget(r.verifier)
                nxt = r.on_no_responders(time.monotonic())
            except (NatsTimeoutError, asyncio.TimeoutError):
                now = time.monotonic()
                nxt = r.on_timeout(now, self.placement.elsewhere(r.verifier, now))
            else:
                try:
                    m = decode(answer.data, self.limits, expect=(VerdictMsg, ErrorMsg))
                except SchemaError as exc:
                    self.log.warning("bad_message", code=exc.code, error=str(exc)[:300], subject=step.subject,
                                     request_id=r.req.request_id)
                    nxt = r.on_timeout(time.monotonic())  # as good as no answer: retry
                else:
                    nxt = r.on_verdict(m, time.monotonic()) if isinstance(m, VerdictMsg) else \
                        r.on_error(m, time.monotonic())
            if isinstance(nxt, Accepted):
                return nxt.verdict, link_ms, stall_time_ms(first, began, step.msg.attempt)
            if isinstance(nxt, Failed):
                raise RoundFailed(nxt.code, nxt.message + self._link_hint(nxt.code))
            self.log.debug("round_retry", request_id=r.req.request_id, round=r.round, attempt=nxt.msg.attempt,
                           subject=nxt.subject, context_resent=nxt.msg.context is not None,
                           wait_s=round(nxt.wait_s, 3))
            step = nxt


def _draft_batch_fields(d: Drafted | None) -> dict[str, float]:
    """The round's draft batch in its log line (0 for a target-only round): size, wait, the batch's costs."""
    if d is None:
        return {"draft_batch_size": 0}
    return {"draft_batch_size": d.batch_size, "draft_batch_wait_ms": round(d.batch_wait_ms, 3),
            "draft_forward_ms": round(d.forward_ms, 3), "draft_bookkeeping_ms": round(d.bookkeeping_ms, 3),
            "draft_sample_ms": round(d.sample_ms, 3)}
