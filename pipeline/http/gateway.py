"""The gateway's NATS side: one OpenAI request = one `generate` request to the edges.

The gateway is a NATS client of the edges (as `specstop run` is), not a part of an edge: HTTP
parsing, SSE writing and slow clients stay off the edge's event loop, whose round timing the
policies learn from, and one gateway serves every edge behind the queue group.

A generation streams through `generate_stream` (its `on_chunk` hook delivers each round's text
as it is accepted); stop sequences are matched here, holding back the few characters that could
begin one; a stop, a client that goes away or a deadline cancels the generation (the client
publishes `cancel`: the edge stops and frees the verifier's session). Speculation statistics come
from the edges' own `timing` events (`specstop.timing.<edge>`, one per round), so the gateway
reports exactly what the edge logged, with no change to the wire protocol.

The gateway also listens to its edges' heartbeats (`specstop.alive.edge.<edge>`) for `/health`
(`pipeline.http.health`), and turns a body into a `Job` in a small thread pool: JSON parsing,
validation, chat rendering and tokenizing grow with the content and must not stall the event loop
that serves every other client (a prompt that cannot fit is refused by its length first).
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

from control import ControlError, make_policy
from pipeline.transport.confirm import confirm_sent
from pipeline.http.body import BodyBudget, decode_json
from pipeline.http.config import GatewayConfig
from pipeline.http.errors import APIError, bad_request, from_edge
from pipeline.http.health import Readiness
from pipeline.http.requests import ChatRequest, CompletionRequest, render_chat, validate
from pipeline.transport.client import StopSignal, StreamResult, generate_stream
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode
from schemas.messages import AliveMsg, GenerateRequest, TimingEvent

_END = object()


@dataclass
class Job:
    """A validated request, ready to send."""
    kind: str                  # "completion" | "chat"
    request_id: str
    prompt: str
    prompt_tokens: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    policy: str | None
    deadline_s: float
    stops: list[str]
    stream: bool
    include_usage: bool


@dataclass
class RoundStats:
    rounds: dict[int, tuple[int, int, str, int, str, str]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def summary(self, rounds: int) -> dict[str, Any]:
        """Statistics of rounds 0..rounds-1 (those that reached the client)."""
        seen = [self.rounds[r] for r in sorted(self.rounds) if r < rounds]
        drafted = sum(x[0] for x in seen)
        accepted = sum(x[1] for x in seen)
        last = seen[-1] if seen else (0, 0, None, 0, None, None)
        return {"rounds": rounds, "rounds_reported": len(seen), "drafted_tokens": drafted,
                "accepted_tokens": accepted,
                "mean_draft_length": round(drafted / len(seen), 4) if seen else 0.0,
                "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
                "policy": last[2], "policy_version": last[3], "edge_id": last[4], "verifier_id": last[5]}


class StopMatcher:
    """Text out as it comes, minus what could still be the start of a stop sequence."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buf = ""
        self.sent = 0

    def feed(self, text: str) -> tuple[str, bool]:
        self.buf += text
        hits = [i for i in (self.buf.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            out, self.sent = self.buf[self.sent:min(hits)], min(hits)
            return out, True
        safe = max(self.sent, len(self.buf) - self.hold)
        out, self.sent = self.buf[self.sent:safe], safe
        return out, False

    def flush(self) -> str:
        out, self.sent = self.buf[self.sent:], len(self.buf)
        return out


class Generation:
    """One request's stream: `await next()` gives the text of the next round (maybe ""), None at the end;
    `finish_reason`, `result` and `stats` are set when it ends."""

    def __init__(self, gw: "Gateway", job: Job):
        self.gw, self.job = gw, job
        self.queue: asyncio.Queue = asyncio.Queue()
        self.matcher = StopMatcher(job.stops)
        self.raw_len = 0
        self.tokens = 0
        self.text = ""
        self.finish_reason: str | None = None
        self.result: StreamResult | None = None
        self.stats: dict[str, Any] = {}
        self.code = "ok"
        self.rounds_seen = 0
        self._stats = gw.track(job.request_id)
        req = GenerateRequest(job.request_id, prompt=job.prompt, max_new_tokens=job.max_tokens,
                              temperature=job.temperature, top_p=job.top_p, seed=job.seed, policy=job.policy,
                              deadline_s=job.deadline_s)
        self.stop = StopSignal()  # cancel() sets it too: a task's cancel can be lost (generate_stream)
        self.task = asyncio.create_task(generate_stream(gw.nc, req, gw.cfg.silence_timeout_s, on_chunk=self._on_chunk,
                                                        subject=subjects.generate(gw.cfg.edge_id), stop=self.stop))
        self.task.add_done_callback(lambda t: self.queue.put_nowait(_END))
        self.deadline = time.monotonic() + job.deadline_s + 2.0  # the edge answers `deadline` first

    def _on_chunk(self, res: StreamResult) -> None:
        self.tokens = len(res.token_ids)
        self.rounds_seen = len(res.chunk_seqs)
        if len(res.text) < self.raw_len:  # a resync that retracted text (never expected): keep what was sent
            self.raw_len = len(res.text)
            return
        delta, self.raw_len = res.text[self.raw_len:], len(res.text)
        self.queue.put_nowait(delta)

    async def next(self) -> str | None:
        if self.finish_reason is not None:
            return None
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + (self.deadline - time.monotonic())):
                item = await self.queue.get()
        except TimeoutError:
            self.cancel("deadline")
            raise APIError(504, f"no answer within the request's deadline of {self.job.deadline_s:g} s", "timeout",
                           None, "deadline") from None
        if item is _END:
            try:
                res = self.task.result()
            except asyncio.CancelledError:
                raise APIError(503, "generation was cancelled", "service_unavailable", None, "unavailable") from None
            except Exception as exc:  # the broker connection failed under us
                self.code = "unavailable"
                raise APIError(503, f"broker unreachable: {type(exc).__name__}", "service_unavailable", None,
                               "unavailable") from None
            self.result = res
            if not res.ok:
                self.code = res.error_code or "internal"
                raise from_edge(res.error_code, res.error or "generation failed")
            self.tokens = len(res.token_ids)
            out = self.matcher.flush()
            await self._finish("stop" if res.finish_reason == "eos" else "length", wait=True)
            return self._emit(out)
        out, hit = self.matcher.feed(item)
        if hit:
            self.cancel("stop")
            await self._finish("stop", wait=False)
        return self._emit(out)

    def _emit(self, out: str) -> str:
        self.text += out
        return out

    async def _finish(self, reason: str, wait: bool) -> None:
        self.finish_reason = reason
        rounds = self.rounds_seen if self.result is None else len(self.result.chunk_seqs) + len(self.result.missing_seqs)
        if wait:
            deadline = time.monotonic() + self.gw.cfg.timing_wait_s
            while sum(1 for r in self._stats.rounds if r < rounds) < rounds and time.monotonic() < deadline:
                self._stats.arrived.clear()
                try:
                    await asyncio.wait_for(self._stats.arrived.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
        self.stats = {"request_id": self.job.request_id, **self._stats.summary(rounds)}

    async def collect(self) -> str:
        while await self.next() is not None:
            pass
        return self.text

    def cancel(self, why: str = "client_gone") -> None:
        """Stop the generation now (no await: this runs in cancelled scopes too); the client task
        publishes `cancel` to the edges as it unwinds."""
        if why == "client_gone" and self.finish_reason is None:
            self.code = "client_gone"
        self.stop.stop(why)
        if not self.task.done():
            self.task.cancel()

    def close(self) -> None:
        self.cancel()
        self.gw.untrack(self.job.request_id)
        self.gw.running.discard(self)

    async def aclose(self) -> None:
        """`close` for Starlette's background task (a plain function would run in a thread)."""
        self.close()


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token can stand for (its longest vocabulary entry; 1 without a
    tokenizer, where a token is a UTF-8 byte): a prompt longer than this times the token bound
    cannot fit, whatever it says, so it is refused before tokenizing."""
    try:
        vocab = tokenizer.get_vocab()
        return max(1, max(len(k) for k in vocab))
    except Exception:
        return 1 if tokenizer is None else 64


ALIVE_EDGES = f"{subjects.ALIVE_PREFIX}.edge"


class Gateway:
    def __init__(self, nc: Client, cfg: GatewayConfig, tokenizer: Any, log: Any):
        self.nc, self.cfg, self.tokenizer, self.log = nc, cfg, tokenizer, log
        self.running: set[Generation] = set()
        self.tracked: dict[str, RoundStats] = {}
        self.started = int(time.time())
        self._subs: list = []
        self._limits = Limits()
        self._alive_limits = Limits(max_payload=1024)
        self.budget = BodyBudget(cfg.body_budget_bytes)
        self.max_prompt_chars = min(cfg.max_prompt_tokens * max_token_chars(tokenizer), self._limits.max_prompt_chars)
        self.readiness = Readiness(cfg.edge_id, time.monotonic(), cfg.heartbeat_window_s)
        self.alive_subject = subjects.edge_alive(cfg.edge_id) if cfg.edge_id else f"{ALIVE_EDGES}.*"
        self.was_ready: bool | None = None
        self._pool = ThreadPoolExecutor(max_workers=cfg.parse_threads, thread_name_prefix="gateway-parse")
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer's settings are not safe to share between threads

    async def start(self) -> None:
        timing = subjects.timing(self.cfg.edge_id) if self.cfg.edge_id else f"{subjects.TIMING_PREFIX}.>"
        self._subs.append(await self.nc.subscribe(timing, cb=self._on_timing))
        self._subs.append(await self.nc.subscribe(self.alive_subject, cb=self._on_alive))
        await confirm_sent(self.nc, 10.0)

    async def stop(self) -> None:
        for g in list(self.running):
            g.close()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _on_alive(self, msg) -> None:
        try:
            alive: AliveMsg = decode(msg.data, self._alive_limits, expect=(AliveMsg,))
            refused = self.readiness.heard(alive, subjects.sender_of(msg.subject, ALIVE_EDGES), time.monotonic())
        except SchemaError as exc:
            refused = str(exc)
        if refused is not None:
            self.log.warning("bad_heartbeat", code="bad_message", subject=msg.subject[:256], error=refused[:300])

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the /health body); a change of readiness is logged once (`readiness_changed`)."""
        ready, body = self.readiness.verdict(time.monotonic(), self.nc.is_connected)
        if ready != self.was_ready:
            self.was_ready = ready
            self.log.info("readiness_changed", ready=ready, missing=body.get("missing", []))
        body["running"] = len(self.running)
        return ready, body

    async def _on_timing(self, msg) -> None:
        try:
            ev: TimingEvent = decode(msg.data, self._limits, expect=(TimingEvent,))
        except SchemaError:
            return
        st = self.tracked.get(ev.request_id)
        if st is not None:
            st.rounds[ev.round] = (ev.length, ev.accepted, ev.policy, ev.policy_version, ev.edge_id, ev.verifier_id)
            st.arrived.set()

    def track(self, request_id: str) -> RoundStats:
        st = self.tracked[request_id] = RoundStats()
        return st

    def untrack(self, request_id: str) -> None:
        self.tracked.pop(request_id, None)

    # --- requests ------------------------------------------------------------------
    async def parse(self, kind: str, raw: bytes, held: int) -> Job:
        """The body -> a Job in a parsing thread (JSON, validation, chat rendering and tokenizing grow
        with the content: beyond `inline_body_bytes`, none of it runs on the event loop); `held` budget
        bytes are given back when the thread is done with them."""
        if len(raw) <= self.cfg.inline_body_bytes:  # bounded work (~0.1 ms): cheaper than a thread hop
            try:
                return self.parse_now(kind, raw)
            finally:
                self.budget.give(held)
        loop = asyncio.get_running_loop()
        try:
            fut = self._pool.submit(self.parse_now, kind, raw)
        except RuntimeError:  # the pool is shut down: the gateway is stopping
            self.budget.give(held)
            raise APIError(503, "the gateway is stopping", "service_unavailable", None, "unavailable") from None
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(self.budget.give, held))
        return await asyncio.wrap_future(fut)

    def parse_now(self, kind: str, raw: bytes) -> Job:
        """`parse` without the thread (CPU-bound)."""
        body = decode_json(raw)
        if kind == "chat":
            req = validate(ChatRequest, body)
            return self.prepare(kind, req, render_chat(req.messages, self.tokenizer), req.completion_limit)
        req = validate(CompletionRequest, body)
        return self.prepare(kind, req, req.prompt_text, req.max_tokens)

    def count_tokens(self, prompt: str) -> int:
        if self.tokenizer is None:
            return len(prompt.encode())
        with self._tokenizer_lock:
            return len(self.tokenizer.encode(prompt, add_special_tokens=False))

    def prepare(self, kind: str, req: Any, prompt: str, max_tokens: int | None) -> Job:
        """Checks that need the tokenizer or this gateway's bounds; a 400/404 names the bad field."""
        cfg = self.cfg
        if req.model != cfg.model_name:
            raise APIError(404, f"The model '{req.model[:256]}' does not exist (this server serves "
                                f"'{cfg.model_name}', see GET /v1/models)", "invalid_request_error", "model",
                           "model_not_found")
        param_tokens = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) is not None else "max_tokens"
        if max_tokens is None:
            max_tokens = cfg.default_chat_tokens if kind == "chat" else cfg.default_completion_tokens
            max_tokens = min(max_tokens, cfg.max_tokens_limit)
        elif max_tokens > cfg.max_tokens_limit:
            raise bad_request(f"{param_tokens} is {max_tokens}; this server allows at most {cfg.max_tokens_limit}",
                              param_tokens)
        if req.stream_options is not None and not req.stream:
            raise bad_request("stream_options is only allowed when stream is true", "stream_options")
        ext = req.specstop
        policy = ext.policy if ext is not None else None
        if policy is not None:
            try:
                make_policy(policy, max_length=cfg.max_length)
            except (ControlError, ValueError) as exc:
                raise bad_request(f"specstop.policy '{policy}': {exc}", "specstop.policy") from None
        deadline = min(ext.deadline_s, cfg.request_timeout_s) if ext is not None and ext.deadline_s else \
            cfg.request_timeout_s
        where = "messages" if kind == "chat" else "prompt"
        if len(prompt) > self.max_prompt_chars:  # checked before tokenizing: the tokenizer's time grows with it
            raise APIError(400, f"{where} is {len(prompt)} characters; this server accepts at most "
                                f"{self.max_prompt_chars} ({cfg.max_prompt_tokens} tokens)",
                           "invalid_request_error", where, "context_length_exceeded")
        n_prompt = self.count_tokens(prompt)
        if n_prompt == 0:
            raise bad_request(f"{where} encodes to no tokens", where)
        if n_prompt > cfg.max_prompt_tokens:
            raise APIError(400, f"{where} is {n_prompt} tokens; this server allows at most {cfg.max_prompt_tokens}",
                           "invalid_request_error", where, "context_length_exceeded")
        if cfg.max_context_tokens is not None and n_prompt + max_tokens > cfg.max_context_tokens:
            raise APIError(400, f"{where} ({n_prompt} tokens) + {param_tokens} ({max_tokens}) exceeds the model's "
                                f"context of {cfg.max_context_tokens} tokens", "invalid_request_error",
                           param_tokens, "context_length_exceeded")
        temperature = 1.0 if req.temperature is None else float(req.temperature)
        seed = req.seed if req.seed is not None else (uuid.uuid4().int & ((1 << 63) - 1) if temperature > 0 else 0)
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return Job(kind, f"{prefix}-{uuid.uuid4().hex}", prompt, n_prompt, max_tokens, temperature,
                   1.0 if req.top_p is None else float(req.top_p), int(seed), policy, float(deadline), req.stops,
                   bool(req.stream), bool(req.stream_options and req.stream_options.include_usage))

    def overloaded(self) -> APIError:
        return APIError(429, f"the gateway has {len(self.running)} generations running (its limit): "
                             "try again later", "rate_limit_exceeded", None, "overloaded")

    def open(self, job: Job) -> Generation:
        if len(self.running) >= self.cfg.max_in_flight:
            raise self.overloaded()
        if not self.nc.is_connected:
            raise APIError(503, "the gateway is not connected to the broker", "service_unavailable", None,
                           "unavailable")
        g = Generation(self, job)
        self.running.add(g)
        return g
