"""Cloud worker: the target model verifies drafts from many edges.

First rounds (and context resends) arrive on the shared subject with queue
group "verifiers", so several verifiers share the load; the verdict names the
verifier and the edge sends later rounds straight to it (sticky sessions). A
round for a session this verifier does not hold answers `resend_context`.
Sessions end on the edge's final message, on a TTL, or never start when the
cap is reached (`overloaded`). Model compute runs on one worker thread so the
event loop keeps receiving while a round computes (inline while this verifier
holds no other session: see WorkerBase.run_model).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from nodes.models.sessions import TargetSession
from nodes.worker_base import WorkerBase
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import DraftMsg, ErrorMsg, VerdictMsg


@dataclass(frozen=True)
class CloudConfig:
    verifier_id: str = "cloud-1"
    max_sessions: int = 128
    session_ttl_s: float = 120.0
    max_in_flight: int = 256


@dataclass
class _Session:
    target: TargetSession
    edge_id: str
    next_round: int
    last_used: float
    last_draft: list[int] = field(default_factory=list)
    last_verdict: VerdictMsg | None = None


class CloudWorker(WorkerBase):
    def __init__(self, nc: Client, model: Any, vocab_size: int, config: CloudConfig, limits: Limits, log: Any,
                 model_nice: int = 0):
        super().__init__(nc, log, "verify", config.max_in_flight, model_nice=model_nice)
        self.model, self.vocab, self.cfg, self.limits = model, vocab_size, config, limits
        self.sessions: dict[str, _Session] = {}
        self.rounds = 0

    async def start(self) -> None:
        self.subs.append(await self.nc.subscribe(subjects.VERIFY, queue=subjects.VERIFIER_QUEUE, cb=self._on_msg))
        self.subs.append(await self.nc.subscribe(subjects.verifier(self.cfg.verifier_id), cb=self._on_msg))
        self.background.add(asyncio.create_task(self._expire_loop()))
        self.log.info("cloud_started", verifier_id=self.cfg.verifier_id, subjects=[subjects.VERIFY,
                      subjects.verifier(self.cfg.verifier_id)], model_nice=self.model_nice)

    async def _on_msg(self, msg: Msg) -> None:
        await self.spawn(self._handle(msg, time.perf_counter()))

    async def _reply_error(self, msg: Msg, code: str, text: str, request_id: str | None = None) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, encode(ErrorMsg(code, text, request_id)))
        self.log.warning("bad_message" if code in ("bad_message", "too_large", "version") else code,
                         code=code, error=text, request_id=request_id, replied=bool(msg.reply), subject=msg.subject)

    async def _handle(self, msg: Msg, received: float) -> None:
        try:
            dm: DraftMsg = decode(msg.data, self.limits, expect=(DraftMsg,))
        except SchemaError as exc:
            await self._reply_error(msg, exc.code, str(exc))
            return
        try:
            await self._verify(msg, dm, received)
        except Exception as exc:  # a bug must not take the worker down: report and keep serving
            self.log.error("internal_error", request_id=dm.request_id, error=repr(exc)[:300])
            await self._reply_error(msg, "internal", f"verifier error: {type(exc).__name__}", dm.request_id)

    async def _verify(self, msg: Msg, dm: DraftMsg, received: float) -> None:
        sess = self.sessions.get(dm.request_id)
        if dm.final:
            self.sessions.pop(dm.request_id, None)
            self.log.info("session_end", request_id=dm.request_id, reason="final", sessions=len(self.sessions))
            return
        if dm.context is None:
            if sess is None:
                await self._reply_error(msg, "resend_context", "no session for this request on this verifier",
                                        dm.request_id)
                return
            if dm.round == sess.next_round - 1 and list(dm.tokens) == sess.last_draft and sess.last_verdict:
                retry = sess.last_verdict  # the edge lost our verdict: answer it again, do not re-apply
                retry.attempt = dm.attempt
                await self.nc.publish(msg.reply, encode(retry))
                self.log.info("verdict_resent", request_id=dm.request_id, round=dm.round, attempt=dm.attempt)
                return
            if dm.round != sess.next_round:
                await self._reply_error(msg, "resend_context",
                                        f"round {dm.round} out of order (expected {sess.next_round})", dm.request_id)
                return
        elif sess is None and len(self.sessions) >= self.cfg.max_sessions:
            await self._reply_error(msg, "overloaded",
                                    f"verifier {self.cfg.verifier_id} holds {len(self.sessions)} sessions (cap)",
                                    dm.request_id)
            return
        def work():
            s = sess
            prefill_ms = 0.0
            if dm.context is not None:
                t0 = time.perf_counter()
                s = _Session(TargetSession(self.model, list(dm.context), self.vocab, dm.params), dm.edge_id,
                             dm.round, 0.0)
                prefill_ms = (time.perf_counter() - t0) * 1e3
            v = s.target.verify(dm.to_draft())
            return s, v, prefill_ms

        alone = len(self.sessions) - (dm.request_id in self.sessions) == 0  # no other request live here
        (s, v, prefill_ms), started = await self.run_model(work, alone=alone)
        queue_ms = (started - received) * 1e3
        verdict = VerdictMsg(dm.request_id, dm.round, dm.attempt, v.accepted, v.next_token,
                             v.verify_ms + prefill_ms, queue_ms, self.cfg.verifier_id)
        s.next_round, s.last_used, s.last_draft, s.last_verdict = dm.round + 1, time.monotonic(), list(dm.tokens), verdict
        self.sessions[dm.request_id] = s
        self.rounds += 1
        if msg.reply:
            await self.send_now(msg.reply, encode(verdict))
        self.log.info("verify", request_id=dm.request_id, round=dm.round, attempt=dm.attempt, edge_id=dm.edge_id,
                      verifier_id=self.cfg.verifier_id, draft_length=len(dm.tokens), accepted=v.accepted,
                      verify_ms=round(v.verify_ms, 3), prefill_ms=round(prefill_ms, 3), queue_ms=round(queue_ms, 3),
                      context_resent=dm.context is not None, context_len=len(s.target.tokens),
                      sessions=len(self.sessions))

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.cfg.session_ttl_s / 2))
            now = time.monotonic()
            for rid, s in list(self.sessions.items()):
                if now - s.last_used > self.cfg.session_ttl_s:
                    del self.sessions[rid]
                    self.log.info("session_end", request_id=rid, reason="ttl", sessions=len(self.sessions))
