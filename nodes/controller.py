"""Control subscriber: learns from every edge's timing events, steers every edge.

Events come from a JetStream stream (bounded in count, bytes, age and message
size) through a durable pull consumer with explicit acks. Per (edge, policy)
one learner runs the policy's `observe` on `outcome_of(event)` (the same
function the edge acts on), told the delay the edge's policy was told
(`told_delay_ms`) and paying the one the round paid, so a policy that
corrects the told delay (`auto`'s delay bias) learns it live (an edge's start-up calibration rounds,
`calibration` set, feed its `calibrate` instead: their lengths were not the policy's choice); after each batch its snapshot is written to a KV
bucket together with the stream sequence of the last event it applied, then
published as a versioned update to that edge, and only then are the events
acked. A restarted controller restores the learners from the bucket (each
snapshot range-checked; a bad one is refused and logged, never used) and skips
redelivered events at or below their sequence, so no event is applied twice
and none is lost.

Nothing an event carries can stop the loop: an event that does not decode,
names another edge than its subject, or names a policy that cannot learn is
acked, logged and skipped. Tree rounds (events with `tree_depth`) are acked and
skipped too, counted in `skipped_trees` and logged once per edge: their length
is a node count and their accepted count a path's length, so a chain policy fed
them would learn a chain of that many tokens accepted that far, which was never
played; tree shapes are learned at the edge (`--tree auto`,
nodes/protocol/tree_shape.py). Learners are bounded (least recently used evicted;
its snapshot stays in the bucket and is read back when its edge returns).
After a broker restart the stream, consumer and bucket are re-created or
resumed. `stop` finishes the batch in hand and returns within ~2 s.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from control import ControlError, Policy, make_policy
from pipeline.transport.confirm import confirm_sent
from pipeline.transport.jetstream import StreamLimits, bucket_keys, ensure_stream, policy_bucket
from nodes.config import MAX_LEARNERS, MAX_LENGTH
from nodes.protocol.calibration import usable as calibration_usable
from nodes.protocol.timing import outcome_of
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import PolicyUpdate, TimingEvent


@dataclass
class Learner:
    policy: Policy
    version: int = 0
    last_seq: int = 0   # stream sequence of the last event applied ...
    stream: str = ""    # ... in this incarnation of the stream (a re-created stream counts from 1 again)


class Controller:
    def __init__(self, nc: Client, log: Any, max_length: int = MAX_LENGTH, seed: int = 0, batch: int = 128,
                 limits: Limits = Limits(), max_learners: int = MAX_LEARNERS, stream: StreamLimits = StreamLimits()):
        self.nc, self.log, self.max_length, self.seed, self.batch, self.limits = nc, log, max_length, seed, batch, limits
        self.max_learners, self.stream = max_learners, stream
        self.learners: OrderedDict[tuple[str, str], Learner] = OrderedDict()
        self._specs: dict[str, tuple[str, bool]] = {}
        self.applied = 0
        self.skipped_duplicates = 0
        self.malformed = 0
        self.skipped_trees = 0
        self._trees_logged: set[str] = set()  # edges whose tree rounds were already reported skipped
        self.evicted = 0
        self.recoveries = 0
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.js = nc.jetstream()
        self.kv = None
        self.psub = None
        self.stream_id = ""

    async def start(self) -> None:
        await self._setup()
        await self._restore()
        self.task = asyncio.create_task(self._loop())
        self.log.info("control_started", learners=len(self.learners))

    async def _setup(self) -> None:
        """Stream, bucket and durable consumer: created if missing, resumed if there."""
        self.stream_id = await ensure_stream(self.js, self.stream)
        self.kv = await policy_bucket(self.js)
        if self.psub is not None:
            try:
                await self.psub.unsubscribe()
            except Exception:
                pass
        self.psub = await self.js.pull_subscribe(
            f"{subjects.TIMING_PREFIX}.>", durable=subjects.CONTROL_DURABLE, stream=subjects.TIMING_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=10000))

    async def stop(self, timeout: float = 2.0) -> None:
        """Finish the batch in hand (applied, persisted, acked), then stop fetching."""
        self.stopping = True
        if self.task:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=timeout)
            except asyncio.TimeoutError:
                self.task.cancel()
        try:  # the last batch's acks were confirmed by the server; flush anything else still buffered
            await confirm_sent(self.nc, timeout)
        except Exception:
            pass  # the broker is away: the batch is redelivered, and dedup skips what was applied
        if self.psub is not None:
            try:
                await self.psub.unsubscribe()
            except Exception:
                pass
        self.log.info("control_stopped", applied=self.applied, duplicates=self.skipped_duplicates,
                      malformed=self.malformed, skipped_trees=self.skipped_trees)

    # --- learners --------------------------------------------------------------------
    async def _restore(self) -> None:
        keys: list[str] = []
        try:
            keys = await bucket_keys(self.js)
        except Exception as exc:  # keep serving: learners then start fresh
            self.log.warning("restore_failed", error=repr(exc)[:200])
        for key in keys[: self.max_learners]:
            ln = await self._read_learner(key)
            if ln is not None:
                self.learners[ln[0]] = ln[1]
        if self.learners:
            self.log.info("learners_restored", count=len(self.learners),
                          versions={f"{e}/{p}": l.version for (e, p), l in self.learners.items()})

    async def _read_learner(self, key: str) -> tuple[tuple[str, str], Learner] | None:
        """A learner from its bucket entry, or None (no entry, or one that fails its checks)."""
        try:
            entry = await self.kv.get(key)
            upd: PolicyUpdate = decode(entry.value, self.limits, expect=(PolicyUpdate,))
            if subjects.policy_key(upd.edge_id, upd.policy) != key:
                raise ControlError(f"entry names {upd.edge_id}/{upd.policy}, not its key")
            pol = make_policy(upd.policy, max_length=self.max_length, seed=self.seed)
            pol.restore(upd.snapshot)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except (SchemaError, ControlError) as exc:
            self.log.warning("snapshot_refused", key=key, error=str(exc)[:300])
            return None
        return (upd.edge_id, pol.spec), Learner(pol, upd.version, upd.last_seq, upd.stream)

    async def learner(self, edge_id: str, spec: str) -> Learner:
        key = (edge_id, spec)
        if key in self.learners:
            self.learners.move_to_end(key)
            return self.learners[key]
        stored = await self._read_learner(subjects.policy_key(edge_id, spec))
        ln = stored[1] if stored is not None else Learner(make_policy(spec, max_length=self.max_length,
                                                                      seed=self.seed))
        self.learners[key] = ln
        while len(self.learners) > self.max_learners:
            self.learners.popitem(last=False)  # its snapshot is in the bucket already
            self.evicted += 1
        return ln

    def _spec(self, text: str) -> tuple[str, bool]:
        """(canonical spec, whether it learns), cached: building a policy per event costs."""
        if text not in self._specs:
            pol = make_policy(text, max_length=self.max_length, seed=self.seed)
            if len(self._specs) >= 256:
                self._specs.clear()
            self._specs[text] = (pol.spec, pol.learns)
        return self._specs[text]

    # --- the loop --------------------------------------------------------------------
    async def _loop(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                msgs = await self.psub.fetch(self.batch, timeout=0.5)
            except (NatsTimeoutError, asyncio.TimeoutError):
                failures = 0
                continue
            except Exception as exc:  # broker restarting, or the stream/consumer gone with it
                failures += 1
                self.log.warning("fetch_failed", error=type(exc).__name__, detail=str(exc)[:200])
                await asyncio.sleep(min(0.25 * failures, 2.0))
                if self.nc.is_connected:
                    await self._recover()
                continue
            failures = 0
            try:
                await self.process(msgs)
            except Exception as exc:  # persisting or publishing failed: not acked, so redelivered later
                self.log.warning("batch_failed", error=type(exc).__name__, detail=str(exc)[:200], events=len(msgs))
                await asyncio.sleep(0.25)

    async def _recover(self) -> None:
        try:
            await self._setup()
        except Exception as exc:
            self.log.warning("recover_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return
        self.recoveries += 1
        self.log.info("jetstream_resumed", recoveries=self.recoveries)

    async def _usable(self, m) -> tuple[Learner, TimingEvent] | None:
        """The learner an event feeds, or None after logging why the event is skipped."""
        try:
            ev: TimingEvent = decode(m.data, self.limits, expect=(TimingEvent,))
            if m.subject != subjects.timing(ev.edge_id):
                raise ControlError(f"event names edge {ev.edge_id!r} but arrived on {m.subject}")
            if ev.tree_depth is not None:
                self._skip_tree(ev)
                return None
            spec, learns = self._spec(ev.policy)
            if not learns:
                return None
            return await self.learner(ev.edge_id, spec), ev
        except Exception as exc:  # anything an event carries ends here: acked, logged, skipped
            self.malformed += 1
            self.log.warning("bad_event", seq=m.metadata.sequence.stream, subject=m.subject,
                             error=f"{type(exc).__name__}: {str(exc)[:300]}")
            return None

    def _skip_tree(self, ev: TimingEvent) -> None:
        self.skipped_trees += 1
        if ev.edge_id not in self._trees_logged:  # once per edge: a tree edge sends one every round
            if len(self._trees_logged) >= 4096:
                self._trees_logged.clear()
            self._trees_logged.add(ev.edge_id)
            self.log.info("tree_rounds_skipped", edge_id=ev.edge_id, policy=ev.policy,
                          reason="a tree round's length counts nodes and its accepted count a path: not a chain "
                                 "round the policy could learn from; the edge learns tree shapes itself")

    async def process(self, msgs) -> None:
        touched: dict[tuple[str, str], Learner] = {}
        for m in msgs:
            seq = m.metadata.sequence.stream
            found = await self._usable(m)
            if found is None:
                continue
            ln, ev = found
            if ln.stream != self.stream_id:  # another incarnation of the stream: its sequences start anew
                ln.stream, ln.last_seq = self.stream_id, 0
            if seq <= ln.last_seq:
                self.skipped_duplicates += 1
                continue
            try:
                if not ev.calibration:
                    ln.policy.observe(outcome_of(ev))
                elif calibration_usable(ev):  # an edge's start-up round: its compute only, not its length's choice
                    ln.policy.calibrate(ev.length, outcome_of(ev).compute_ms)
            except Exception as exc:  # a learner must never take the loop down
                self.malformed += 1
                self.log.warning("bad_event", seq=seq, subject=m.subject, error=f"observe failed: {exc!r}"[:300])
                continue
            ln.version += 1
            ln.last_seq = seq
            self.applied += 1
            touched[(ev.edge_id, ln.policy.spec)] = ln
        for (edge_id, spec), ln in touched.items():
            upd = PolicyUpdate(edge_id, spec, ln.version, ln.policy.snapshot(), ln.last_seq, ln.stream)
            payload = encode(upd)
            try:
                await self.kv.put(subjects.policy_key(edge_id, spec), payload)
            except (NatsTimeoutError, ConnectionError, OSError):
                raise  # the broker is away: nothing acked, the batch comes back
            except Exception as exc:  # this learner cannot be stored (bucket full, say): the others can
                self.log.warning("persist_failed", edge_id=edge_id, policy=spec, error=f"{type(exc).__name__}: {exc}"[:300])
            await self.nc.publish(subjects.policy(edge_id), payload)
        for m in msgs[:-1]:
            await m.ack()
        if msgs:  # the last one waits for the server: once it answers, the batch's acks are all processed
            try:
                await msgs[-1].ack_sync(timeout=5.0)
            except (NatsTimeoutError, asyncio.TimeoutError):
                pass  # unconfirmed: at worst redelivered, and skipped as already applied
        if touched:
            self.log.debug("updates_published", events=len(msgs), applied_total=self.applied,
                           versions={f"{e}/{p}": l.version for (e, p), l in touched.items()}, ts_mono=time.monotonic())
