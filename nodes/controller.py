"""Control subscriber: learns from every edge's timing events, steers every edge.

Events come from a JetStream stream through a durable pull consumer with
explicit acks. Per (edge, policy) one learner runs the policy's `observe`; after
each batch its snapshot is written to a KV bucket together with the stream
sequence of the last event it applied, then published as a versioned update to
that edge, and only then are the events acked. A restarted controller restores
the learners from the bucket and skips redelivered events at or below their
sequence, so no event is applied twice and none is lost. Malformed events are
acked, logged and skipped.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, NoKeysError, NotFoundError

from control import Policy, RoundContext, RoundOutcome, make_policy
from control.types import ControlError
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import PolicyUpdate, TimingEvent

NOT_LEARNED = ("target-only",)


@dataclass
class Learner:
    policy: Policy
    version: int = 0
    last_seq: int = 0


async def ensure_stream(js) -> None:
    cfg = StreamConfig(name=subjects.TIMING_STREAM, subjects=[f"{subjects.TIMING_PREFIX}.>"],
                       storage=StorageType.FILE, max_age=24 * 3600.0)
    try:
        await js.add_stream(cfg)
    except BadRequestError:
        await js.update_stream(cfg)


async def policy_bucket(js):
    try:
        return await js.key_value(subjects.POLICY_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(bucket=subjects.POLICY_BUCKET, history=1)


class Controller:
    def __init__(self, nc: Client, log: Any, max_length: int = 8, seed: int = 0, batch: int = 128,
                 limits: Limits = Limits()):
        self.nc, self.log, self.max_length, self.seed, self.batch, self.limits = nc, log, max_length, seed, batch, limits
        self.learners: dict[tuple[str, str], Learner] = {}
        self.applied = 0
        self.skipped_duplicates = 0
        self.malformed = 0
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.js = nc.jetstream()
        self.kv = None
        self.psub = None

    async def start(self) -> None:
        await ensure_stream(self.js)
        self.kv = await policy_bucket(self.js)
        await self._restore()
        self.psub = await self.js.pull_subscribe(
            f"{subjects.TIMING_PREFIX}.>", durable=subjects.CONTROL_DURABLE, stream=subjects.TIMING_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=10000))
        self.task = asyncio.create_task(self._loop())
        self.log.info("control_started", learners=len(self.learners))

    async def stop(self) -> None:
        """Finish the batch in hand (applied, persisted, acked), then stop fetching."""
        self.stopping = True
        if self.task:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
            except asyncio.TimeoutError:
                self.task.cancel()
        self.log.info("control_stopped", applied=self.applied, duplicates=self.skipped_duplicates,
                      malformed=self.malformed)

    async def _restore(self) -> None:
        keys: list[str] = []
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            pass
        except Exception as exc:  # keep serving: learners then start fresh
            self.log.warning("restore_failed", error=repr(exc)[:200])
        for key in keys:
            try:
                entry = await self.kv.get(key)
                upd: PolicyUpdate = decode(entry.value, self.limits, expect=(PolicyUpdate,))
                pol = make_policy(upd.policy, max_length=self.max_length, seed=self.seed)
                pol.restore(upd.snapshot)
            except (KeyNotFoundError, SchemaError, ControlError) as exc:
                self.log.warning("snapshot_skipped", key=key, error=str(exc))
                continue
            self.learners[(upd.edge_id, upd.policy)] = Learner(pol, upd.version, upd.last_seq)
        if self.learners:
            self.log.info("learners_restored", count=len(self.learners),
                          versions={f"{e}/{p}": l.version for (e, p), l in self.learners.items()})

    def learner(self, edge_id: str, spec: str) -> Learner:
        key = (edge_id, spec)
        if key not in self.learners:
            self.learners[key] = Learner(make_policy(spec, max_length=self.max_length, seed=self.seed))
        return self.learners[key]

    async def _loop(self) -> None:
        while not self.stopping:
            try:
                msgs = await self.psub.fetch(self.batch, timeout=0.5)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as exc:  # broker restarting: keep trying
                self.log.warning("fetch_failed", error=type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            await self.process(msgs)

    async def process(self, msgs) -> None:
        touched: dict[tuple[str, str], Learner] = {}
        for m in msgs:
            seq = m.metadata.sequence.stream
            try:
                ev: TimingEvent = decode(m.data, self.limits, expect=(TimingEvent,))
                if ev.policy in NOT_LEARNED:
                    continue
                ln = self.learner(ev.edge_id, ev.policy)
            except (SchemaError, ControlError) as exc:
                self.malformed += 1
                self.log.warning("bad_event", seq=seq, subject=m.subject, error=str(exc))
                continue
            if seq <= ln.last_seq:
                self.skipped_duplicates += 1
                continue
            ctx = RoundContext(ev.network_ms / 2.0, ev.channel_state)
            ln.policy.observe(RoundOutcome(ev.length, ev.accepted, ev.round_ms, ctx))
            ln.version += 1
            ln.last_seq = seq
            self.applied += 1
            touched[(ev.edge_id, ev.policy)] = ln
        for (edge_id, spec), ln in touched.items():
            upd = PolicyUpdate(edge_id, spec, ln.version, ln.policy.snapshot(), ln.last_seq)
            payload = encode(upd)
            await self.kv.put(subjects.policy_key(edge_id, spec), payload)
            await self.nc.publish(subjects.policy(edge_id), payload)
        for m in msgs:
            await m.ack()
        if touched:
            self.log.info("updates_published", events=len(msgs), applied_total=self.applied,
                          versions={f"{e}/{p}": l.version for (e, p), l in touched.items()}, ts_mono=time.monotonic())
