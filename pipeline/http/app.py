"""The OpenAI-compatible HTTP API (Starlette; served by uvicorn in `pipeline.http.serve`).

`POST /v1/completions`, `POST /v1/chat/completions` (stream or not), `GET /v1/models`,
`GET /metrics`, `GET /health` (readiness), `GET /health/live`. A streamed request waits for its first
round before answering, so errors that happen before any token (no edge, no verifier, overloaded, too
long) still get their HTTP status; an error after the first token is sent as an SSE event
`{"error": {...}}` (the openai client raises it). Every failure is an OpenAI-shaped error; nothing a
client sends can stop the server. A body is bounded before it is read (`pipeline.http.body`) and
parsed off the event loop (`Gateway.parse`); every response is logged and counted
(`pipeline.http.accounting`).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline.http.accounting import LOGGED, Accounting
from pipeline.http.body import read_body
from pipeline.http.errors import APIError
from pipeline.http.gateway import Gateway, Generation, Job

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def usage(job: Job, gen: Generation) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": gen.tokens,
            "total_tokens": job.prompt_tokens + gen.tokens}


class API:
    def __init__(self, gw: Gateway, metrics_registry=None):
        self.gw, self.registry = gw, metrics_registry

    # --- plumbing --------------------------------------------------------------------
    def _log(self, request: Request, endpoint: str, job: Job | None, gen: Generation | None, status: int,
             t0: float, ttft: float | None, code: str | None = None) -> None:
        request.scope[LOGGED] = True  # the accounting middleware logs every other response
        fields = dict(endpoint=endpoint, status=status, total_ms=round((time.perf_counter() - t0) * 1e3, 3),
                      ttft_ms=None if ttft is None else round((ttft - t0) * 1e3, 3))
        if job is not None:
            fields.update(request_id=job.request_id, stream=job.stream, prompt_tokens=job.prompt_tokens,
                          max_tokens=job.max_tokens, policy=job.policy)
        if gen is not None:
            fields.update(completion_tokens=gen.tokens, finish_reason=gen.finish_reason,
                          rounds=gen.stats.get("rounds", gen.rounds_seen))
        if code is None and status < 400:
            self.gw.log.info("http_request", **fields)
        else:
            self.gw.log.warning("http_request", code=code or "error", **fields)

    async def _parse(self, request: Request, kind: str) -> Job:
        """Bounded before any work that grows with the content: generations running (429), then the
        body's bytes and time (413, 408, 429), then parsing and tokenizing in a thread."""
        gw = self.gw
        if len(gw.running) >= gw.cfg.max_in_flight:
            raise gw.overloaded()
        raw, held = await read_body(request, gw.cfg.max_body_bytes, gw.cfg.body_timeout_s, gw.budget)
        return await gw.parse(kind, raw, held)

    # --- endpoints -------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion", "/v1/completions")

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat", "/v1/chat/completions")

    async def _generate(self, request: Request, kind: str, endpoint: str) -> Response:
        t0 = time.perf_counter()
        job = gen = None
        handed_off = False
        try:
            job = await self._parse(request, kind)
            gen = self.gw.open(job)
            if job.stream:
                first = await gen.next()  # the first round (or the error before any token)
                handed_off = True  # the SSE body closes it (and the background task, if the body never starts)
                return StreamingResponse(self._sse(request, endpoint, job, gen, first, t0),
                                         media_type="text/event-stream", headers=SSE_HEADERS,
                                         background=BackgroundTask(gen.aclose))
            text = await self._collect(request, gen)
            if text is None:  # the client went away: nobody to answer
                self._log(request, endpoint, job, gen, 499, t0, None, "client_gone")
                return Response(status_code=499)
            self._log(request, endpoint, job, gen, 200, t0, None)
            return JSONResponse(self._whole(job, gen, text))
        except APIError as err:
            self._log(request, endpoint, job, gen, err.status, t0, None, err.code)
            return error_response(err)
        finally:
            if gen is not None and not handed_off:
                gen.close()

    async def _collect(self, request: Request, gen: Generation) -> str | None:
        """The whole text, or None if the client disconnected first (the generation is then cancelled)."""
        work = asyncio.ensure_future(gen.collect())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work in done:
            return work.result()
        work.cancel()
        gen.cancel("client_gone")
        return None

    def _head(self, job: Job, obj: str) -> dict:
        return {"id": job.request_id, "object": obj, "created": int(time.time()), "model": self.gw.cfg.model_name}

    def _whole(self, job: Job, gen: Generation, text: str) -> dict:
        if job.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": gen.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": gen.finish_reason}
            obj = "text_completion"
        return {**self._head(job, obj), "choices": [choice], "usage": usage(job, gen), "system_fingerprint": None,
                "specstop": gen.stats}

    def _chunk(self, job: Job, text: str | None, finish: str | None, role: bool = False) -> dict:
        if job.kind == "chat":
            delta: dict = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            head = self._head(job, "chat.completion.chunk")
        else:
            choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
            head = self._head(job, "text_completion")
        out = {**head, "choices": [choice]}
        if job.include_usage:
            out["usage"] = None
        return out

    async def _sse(self, request: Request, endpoint: str, job: Job, gen: Generation, first: str | None,
                   t0: float) -> AsyncIterator[bytes]:
        ttft = None
        status, code = 200, None
        try:
            if job.kind == "chat":
                yield _event(self._chunk(job, None, None, role=True))
            text = first
            while text is not None:
                if text:
                    if ttft is None:
                        ttft = time.perf_counter()
                    yield _event(self._chunk(job, text, None))
                try:
                    text = await gen.next()
                except APIError as err:  # after the first token: the status is sent, say it in the stream
                    status, code = err.status, err.code
                    yield _event(err.body())
                    return
            final = self._chunk(job, None if job.kind == "chat" else "", gen.finish_reason)
            final["specstop"] = gen.stats
            yield _event(final)
            if job.include_usage:
                yield _event({**self._head(job, "chat.completion.chunk" if job.kind == "chat" else "text_completion"),
                              "choices": [], "usage": usage(job, gen), "specstop": gen.stats})
            yield b"data: [DONE]\n\n"
        finally:  # also on a client disconnect (the response task is cancelled): no await here
            if gen.finish_reason is None and code is None:
                gen.cancel("client_gone")
                status, code = 499, "client_gone"
            gen.close()
            self._log(request, endpoint, job, gen, status, t0, ttft, code)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name != self.gw.cfg.model_name:
            return error_response(APIError(404, f"The model '{name[:256]}' does not exist", "invalid_request_error",
                                           "model", "model_not_found"))
        return JSONResponse(self._model())

    def _model(self) -> dict:
        return {"id": self.gw.cfg.model_name, "object": "model", "created": self.gw.started, "owned_by": "specstop"}

    async def metrics(self, request: Request) -> Response:
        if self.registry is None:
            return error_response(APIError(404, "metrics are off", "invalid_request_error", None, "not_found"))
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        """Ready (200) when an edge this gateway fronts sends heartbeats, is not draining and hears a
        verifier; else 503 naming what is missing (`pipeline.http.health`)."""
        ready, body = self.gw.health()
        return JSONResponse(body, status_code=200 if ready else 503)

    async def live(self, request: Request) -> Response:
        """The process serves HTTP (a liveness probe: unlike /health, true without an edge)."""
        return JSONResponse({"status": "alive", "running": len(self.gw.running)})


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   "invalid_request_error", None, code))


def create_app(gw: Gateway, metrics_registry=None) -> Starlette:
    api = API(gw, metrics_registry)
    routes = [Route("/v1/completions", api.completions, methods=["POST"]),
              Route("/v1/chat/completions", api.chat, methods=["POST"]),
              Route("/v1/models", api.models, methods=["GET"]),
              Route("/v1/models/{model:path}", api.model, methods=["GET"]),
              Route("/metrics", api.metrics, methods=["GET"]),
              Route("/health", api.health, methods=["GET"]),
              Route("/health/live", api.live, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error},
                     middleware=[Middleware(Accounting, log=gw.log)])
