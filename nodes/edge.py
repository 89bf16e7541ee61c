"""Edge worker: drafts locally, verifies remotely, streams tokens to the client.

Each generate request runs as its own task: per round it asks the policy for a
length (from the latest measured delay and the channel state), drafts (on the
model thread, or inline when it is the only request: see WorkerBase.run_model),
sends the draft across the emulated link, applies the verdict,
streams one TokenChunk to the client and publishes one TimingEvent. Rounds are
retried (same round, same seed, next attempt) when a reply is lost, and the
full context is resent when the verifier lost the session.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from control import Policy, RoundContext, RoundOutcome, make_policy
from control.types import ControlError
from nodes.detokenize import IncrementalDetokenizer
from nodes.models.loading import ModelPair
from nodes.models.sessions import DraftSession
from nodes.speculative import finish
from nodes.worker_base import WorkerBase
from pipeline.channel import Channel, ConstChannel, LinkTimer
from schemas import subjects
from schemas.codec import Int32Array, Limits, SchemaError, decode, encode
from schemas.messages import DraftMsg, ErrorMsg, GenerateRequest, PolicyUpdate, TimingEvent, TokenChunk, VerdictMsg
from schemas.rounds import Draft, SamplingParams, round_seed

TARGET_ONLY = "target-only"


class RoundFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class EdgeConfig:
    edge_id: str = "edge-1"
    default_policy: str = "auto"
    max_length: int = 8
    request_timeout_s: float = 10.0
    max_attempts: int = 6
    max_concurrent: int = 64
    seed: int = 0


class PolicyBook:
    """The policies this edge acts on, one per spec, shared by all its requests.

    Local mode learns in-process. Remote mode only acts: `observe` runs in the
    control subscriber, whose versioned snapshots arrive through `apply_update`;
    until the first one arrives a spec acts on `fallback` (the theory's best
    length from the pair's shipped profile, or a fixed length)."""

    def __init__(self, max_length: int, seed: int, learn_locally: bool = True, fallback: Policy | None = None):
        self.max_length, self.seed, self.learn_locally = max_length, seed, learn_locally
        self.fallback = fallback or make_policy("fixed:4", max_length=max_length)
        self.policies: dict[str, Policy] = {}
        self.versions: dict[str, int] = {}

    def get(self, spec: str) -> Policy:
        if spec not in self.policies:
            self.policies[spec] = make_policy(spec, max_length=self.max_length, seed=self.seed)
            self.versions[spec] = 0
        return self.policies[spec]

    def acting(self, spec: str) -> tuple[Policy, int]:
        """The policy object to act on now, and the version it stands for."""
        pol = self.get(spec)
        if self.learn_locally or self.versions[spec] > 0 or spec.startswith("fixed:"):
            return pol, self.versions[spec]
        return self.fallback, 0

    def apply_update(self, spec: str, version: int, snapshot: dict) -> None:
        """Restore a controller snapshot; raises ControlError (and changes nothing) if refused."""
        if version <= self.versions.get(spec, 0):
            raise ControlError(f"update version {version} is not newer than {self.versions.get(spec, 0)}")
        fresh = make_policy(spec, max_length=self.max_length, seed=self.seed)
        fresh.restore(snapshot)
        self.policies[spec] = fresh
        self.versions[spec] = version


class EdgeWorker(WorkerBase):
    def __init__(self, nc: Client, pair: ModelPair, config: EdgeConfig, limits: Limits, log: Any,
                 channel: Channel | None = None, policies: PolicyBook | None = None, model_nice: int = 0):
        super().__init__(nc, log, "draft", config.max_concurrent, model_nice=model_nice)
        self.pair, self.cfg, self.limits = pair, config, limits
        self.channel = channel or ConstChannel(0.0)
        self.link = LinkTimer()
        self.policies = policies or PolicyBook(config.max_length, config.seed)
        self.latest_delay_ms = 0.0
        self.timing_seq = 0

    async def start(self) -> None:
        self.subs.append(await self.nc.subscribe(subjects.GENERATE, queue=subjects.EDGE_QUEUE, cb=self._on_generate))
        self.subs.append(await self.nc.subscribe(subjects.generate(self.cfg.edge_id), cb=self._on_generate))
        if not self.policies.learn_locally:
            self.subs.append(await self.nc.subscribe(subjects.policy(self.cfg.edge_id), cb=self._on_policy))
            await self._restore_from_bucket()
        self.log.info("edge_started", edge_id=self.cfg.edge_id, channel=self.channel.spec,
                      policy=self.cfg.default_policy, model_nice=self.model_nice)

    async def _on_policy(self, msg: Msg) -> None:
        try:
            upd: PolicyUpdate = decode(msg.data, self.limits, expect=(PolicyUpdate,))
            if upd.edge_id != self.cfg.edge_id:
                raise ControlError(f"update is for edge {upd.edge_id!r}")
            self.policies.apply_update(upd.policy, upd.version, upd.snapshot)
        except (SchemaError, ControlError) as exc:
            self.log.warning("policy_update_refused", error=str(exc), subject=msg.subject,
                             kept_versions=dict(self.policies.versions))
            return
        self.log.info("policy_update", policy=upd.policy, policy_version=upd.version)

    async def _restore_from_bucket(self) -> None:
        """Resume from the controller's latest snapshots (if any) before serving."""
        try:
            kv = await self.nc.jetstream().key_value(subjects.POLICY_BUCKET)
            keys = await kv.keys()
        except Exception:  # no JetStream, no bucket yet, or no keys: act on the defaults
            return
        for key in keys:
            if not key.startswith(self.cfg.edge_id + "."):
                continue
            try:
                upd = decode((await kv.get(key)).value, self.limits, expect=(PolicyUpdate,))
                self.policies.apply_update(upd.policy, upd.version, upd.snapshot)
                self.log.info("policy_update", policy=upd.policy, policy_version=upd.version, source="bucket")
            except Exception as exc:
                self.log.warning("policy_update_refused", error=str(exc), source="bucket", key=key)

    async def _on_generate(self, msg: Msg) -> None:
        try:
            req: GenerateRequest = decode(msg.data, self.limits, expect=(GenerateRequest,))
            spec = req.policy or self.cfg.default_policy
            if spec != TARGET_ONLY:
                self.policies.get(spec)  # a bad spec is refused before any work
        except (SchemaError, ControlError) as exc:
            code = getattr(exc, "code", "bad_message")
            if msg.reply:
                await self.nc.publish(msg.reply, encode(ErrorMsg(code, str(exc))))
            self.log.warning("bad_message", code=code, error=str(exc), replied=bool(msg.reply), subject=msg.subject)
            return
        await self.spawn(self._serve(req, msg.reply, spec))

    async def _serve(self, req: GenerateRequest, reply: str | None, spec: str) -> None:
        try:
            await self.generate(req, spec, reply)
        except Exception as exc:  # report to the client, keep serving others
            self.log.error("request_failed", request_id=req.request_id, error=repr(exc)[:300])
            if reply:
                await self.nc.publish(reply, encode(ErrorMsg("internal", f"request failed: {exc}", req.request_id)))

    async def _run(self, fn, *args):
        """Model compute (inline when this is the only request, else on the model thread); (result, ms queued)."""
        queued = time.perf_counter()
        result, started = await self.run_model(fn, *args, alone=len(self.tasks) <= 1)
        return result, (started - queued) * 1e3

    async def generate(self, req: GenerateRequest, spec: str, reply: str | None) -> list[int]:
        tok = self.pair.tokenizer
        prompt = list(req.prompt_ids) if req.prompt_ids else tok.encode(req.prompt, add_special_tokens=False)
        if not prompt:
            raise ValueError("prompt encodes to no tokens")
        params = SamplingParams(req.temperature, req.top_p)
        target_only = spec == TARGET_ONLY
        draft, _ = await self._run(DraftSession, self.pair.draft, prompt, self.pair.vocab_size, params)
        context = list(prompt)  # what the verifier must hold: prompt + every emitted token
        detok = IncrementalDetokenizer(tok, self.pair.eos_ids)
        out: list[int] = []
        subject, send_context = subjects.VERIFY, True
        rnd, reason = 0, None
        while reason is None:
            sample = self.channel.sample()
            ctx = RoundContext(self.latest_delay_ms, sample.state)
            policy, version = (None, 0) if target_only else self.policies.acting(spec)
            length = 0 if target_only else policy.choose(ctx)
            seed = round_seed(req.seed, rnd)
            t0 = time.perf_counter()
            if target_only:
                d, edge_queue_ms = Draft([], seed), 0.0
            else:
                stop = (lambda pos, prob, _h: policy.should_stop(ctx, pos, prob))
                d, edge_queue_ms = await self._run(draft.propose, length, seed, stop)
            dm = DraftMsg.from_draft(d, request_id=req.request_id, round=rnd, attempt=0, edge_id=self.cfg.edge_id,
                                     params=params, context=context if send_context else None)
            verdict, subject, resent, link_ms = await self._exchange(dm, subject, sample, context)
            round_ms = (time.perf_counter() - t0) * 1e3
            if target_only:
                new = [verdict.next_token]
            else:
                new, _ = await self._run(draft.apply, verdict.to_verdict())
            context.extend(new)
            send_context = False
            before = len(out)
            reason = finish(new, out, req.max_new_tokens, self.pair.eos_ids)
            kept = out[before:]
            network_ms = max(0.0, round_ms - edge_queue_ms - d.draft_ms - verdict.verify_ms - verdict.queue_ms)
            self.latest_delay_ms = network_ms / 2
            measured = RoundContext(network_ms / 2, sample.state)
            if policy is not None and self.policies.learn_locally:  # else the controller learns
                policy.observe(RoundOutcome(len(d), verdict.accepted, round_ms, measured))
            if reply:
                text = detok.feed(kept) + (detok.flush() if reason else "")
                done = reason is not None
                full_ids = Int32Array(out) if done else None
                full_text = (detok.flush_all() if done else None)
                await self.send_now(reply, encode(TokenChunk(req.request_id, rnd, Int32Array(kept), text, done,
                                                               reason, rnd + 1, len(out), full_ids, full_text)))
            fields = dict(request_id=req.request_id, round=rnd, attempt=dm.attempt, edge_id=self.cfg.edge_id,
                          verifier_id=verdict.verifier_id, draft_length=len(d), accepted=verdict.accepted,
                          tokens=len(kept), draft_ms=round(d.draft_ms, 3), edge_queue_ms=round(edge_queue_ms, 3),
                          verify_ms=round(verdict.verify_ms, 3), queue_ms=round(verdict.queue_ms, 3),
                          network_ms=round(network_ms, 3), link_ms=round(link_ms, 3), round_ms=round(round_ms, 3),
                          delay_ms=round(sample.one_way_ms, 3), channel_state=sample.state, policy=spec,
                          policy_version=version, context_resent=resent, context_len=len(context))
            self.log.info("round", **fields)
            await self._publish_timing(fields)
            rnd += 1
        await self.nc.publish(subject, encode(DraftMsg(req.request_id, rnd, 0, self.cfg.edge_id, Int32Array(), 0,
                                                       final=True)))
        self.log.info("request_done", request_id=req.request_id, rounds=rnd, tokens=len(out), finish_reason=reason,
                      policy=spec)
        return out

    async def _publish_timing(self, f: dict) -> None:
        self.timing_seq += 1
        ev = TimingEvent(f["edge_id"], f["request_id"], f["round"], f["attempt"], f["draft_length"], f["accepted"],
                         f["round_ms"], f["draft_ms"], f["verify_ms"], f["queue_ms"], f["network_ms"], f["delay_ms"],
                         f["policy"], f["policy_version"], f["verifier_id"], f["channel_state"], self.timing_seq,
                         f["tokens"], f["edge_queue_ms"])
        await self.send_now(subjects.timing(self.cfg.edge_id), encode(ev))

    async def _exchange(self, dm: DraftMsg, subject: str, sample, context: list[int]):
        """Send one round until a verdict comes back: retries, resends, re-routing."""
        resent = False
        link_ms = 0.0
        for attempt in range(self.cfg.max_attempts):
            dm.attempt = attempt
            link_ms += await self.link.sleep(sample.up_ms)
            try:
                reply = await self.nc.request(subject, encode(dm), timeout=self.cfg.request_timeout_s)
            except (NatsTimeoutError, NoRespondersError, asyncio.TimeoutError) as exc:
                self.log.warning("round_retry", request_id=dm.request_id, round=dm.round, attempt=attempt,
                                 reason=type(exc).__name__, subject=subject)
                if attempt >= 1 or isinstance(exc, NoRespondersError):  # the verifier may be gone: any verifier
                    subject, dm.context, resent = subjects.VERIFY, Int32Array(context), True
                await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
                continue
            link_ms += await self.link.sleep(sample.down_ms)
            try:
                m = decode(reply.data, self.limits, expect=(VerdictMsg, ErrorMsg))
            except SchemaError as exc:
                self.log.warning("bad_message", code=exc.code, error=str(exc), subject=reply.subject)
                continue
            if isinstance(m, ErrorMsg):
                self.log.info("round_error_reply", request_id=dm.request_id, round=dm.round, code=m.code,
                              error=m.message)
                if m.code in ("resend_context", "overloaded"):
                    subject, dm.context, resent = subjects.VERIFY, Int32Array(context), True
                    if m.code == "overloaded":
                        await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
                    continue
                raise RoundFailed(f"verifier refused round {dm.round}: {m.code}: {m.message}")
            if m.request_id != dm.request_id or m.round != dm.round:
                self.log.warning("stale_verdict", request_id=dm.request_id, round=dm.round, got_round=m.round)
                continue
            return m, subjects.verifier(m.verifier_id), resent, link_ms
        raise RoundFailed(f"round {dm.round} of {dm.request_id} got no verdict after {self.cfg.max_attempts} attempts")

