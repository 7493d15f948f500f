"""The HTTP API (FastAPI): typed requests, one JSON error shape for every refusal, the size limit, the
JSON access log, the admin endpoints. The model runs only on the scheduler's thread; a handler validates,
queues a job and awaits its future, polling for a client that went away."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from dataclasses import asdict
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from unifairseq.serve.config import Settings
from unifairseq.serve.engine import Engine, InputError, resolve_in
from unifairseq.serve.metrics import Metrics
from unifairseq.serve.scheduler import Job, Refused, Scheduler, TimedOut
from unifairseq.serve.schema import ClassifyRequest, GenerateRequest

access_log = logging.getLogger("unifairseq.serve.access")
log = logging.getLogger("unifairseq.serve")
POLL_S = 0.05  # how often a waiting handler checks whether its client is still there


class ClientGone(Exception):
    pass


class State:
    """What the handlers share: the engine once loaded, the scheduler, the metrics, the settings."""

    def __init__(self, settings: Settings, loader: Callable[[], Engine]):
        self.settings, self.loader = settings, loader
        self.engine: Optional[Engine] = None
        self.scheduler: Optional[Scheduler] = None
        self.error: Optional[str] = None
        self.metrics = Metrics(lambda: self.scheduler.depth() if self.scheduler else 0,
                               lambda: len(self.engine.names) if self.engine else 0)

    def load(self) -> None:
        try:
            engine = self.loader()
        except Exception as e:  # the server stays up and says why it is not ready
            log.exception("loading the model failed")
            self.error = str(e) or type(e).__name__
            return
        s = self.settings
        self.scheduler = Scheduler(engine, self.metrics, s.max_batch, s.max_tokens, s.max_wait_ms, s.max_queue,
                                   one_delta=s.scheduling == "one-delta").start()
        self.engine = engine
        log.info("ready: %s deltas on %s", len(engine.names), s.base)

    @property
    def draining(self) -> bool:
        return self.scheduler is not None and self.scheduler.draining

    def ready(self) -> Engine:
        if self.engine is None:
            raise Refused(503, "the model is still loading" if self.error is None else
                          f"the model failed to load: {self.error}", retry_after=2)
        return self.engine


def error_response(status: int, field: Optional[str], message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status, headers=headers)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return "".join(f"[{p}]" if p.isdigit() else (f".{p}" if i else p) for i, p in enumerate(parts)) or "body"


def create_app(settings: Settings, loader: Callable[[], Engine], load_in_background: bool = True) -> FastAPI:
    state = State(settings, loader)

    async def lifespan(app):
        if load_in_background:
            threading.Thread(target=state.load, name="unifairseq-load", daemon=True).start()
        else:
            state.load()
        yield
        if state.scheduler is not None:
            state.scheduler.stop()

    app = FastAPI(title="unifairseq-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state

    # ------------------------------------------------------------ errors: always {"error": {field, message}}
    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return error_response(400, "body", f"malformed JSON: {err.get('ctx', {}).get('error', err['msg'])}")
        where = _field(err.get("loc", ()))
        if err.get("type") == "missing" and where == "body":
            return error_response(400, "body", "the request needs a JSON object body")
        if err.get("type") == "extra_forbidden":
            return error_response(422, where, f"{where}: unknown field")
        return error_response(422, where, f"{where}: {err['msg']}")

    @app.exception_handler(InputError)
    async def _input(request, exc: InputError):
        return error_response(exc.status, exc.field, str(exc))

    @app.exception_handler(Refused)
    async def _refused(request, exc: Refused):
        return error_response(exc.status, None, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TimedOut)
    async def _timeout(request, exc: TimedOut):
        return error_response(504, "timeout_ms", "the request passed its deadline before it was computed; "
                              "retry, or give a larger timeout_ms")

    @app.exception_handler(ClientGone)
    async def _gone(request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it: the status is for the access log

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        if request.scope.get(TOO_LARGE):
            return _too_large(settings.max_request_bytes)
        return error_response(exc.status_code, None, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, None, "internal error (logged on the server)")

    # ------------------------------------------------------------ helpers
    def _limits(req, eng: Engine, request: Request, kind: str):
        request.state.delta = req.delta
        if req.delta is not None and not eng.has(req.delta):
            raise InputError("delta", f"no delta named {req.delta!r}; GET /v1/deltas lists those served", 404)
        if (req.text is None) == (req.tokens is None):
            raise InputError("text", "give exactly one of text or tokens")
        if req.text is not None:
            if not req.text.strip():
                raise InputError("text", "text is empty; give a sentence")
            tokens = eng.encode(req.text)
            where = "text"
        else:
            tokens = eng.check_tokens(req.tokens, "tokens")
            where = "tokens"
        eng.check_length(tokens, where)
        cap = settings.request_timeout_s
        timeout = min(cap, req.timeout_ms / 1000.0) if req.timeout_ms else cap
        return tokens, time.monotonic() + timeout

    async def _wait(request: Request, job: Job):
        state.scheduler.submit(job)
        fut = asyncio.wrap_future(job.future)
        try:
            while True:
                left = job.deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut()
                done, _ = await asyncio.wait({fut}, timeout=min(POLL_S, left))
                if done:
                    return fut.result()
                if await request.is_disconnected():
                    state.metrics.dropped.inc("client_gone")
                    raise ClientGone()
        finally:
            if not fut.done():
                job.cancelled = True
                fut.cancel()

    # ------------------------------------------------------------ the API
    @app.get("/health")
    async def health():
        if state.draining:
            return error_response(503, None, "draining", headers={"Retry-After": "1"})
        if state.engine is None:
            msg = "loading" if state.error is None else f"failed to load: {state.error}"
            return error_response(503, None, msg, headers={"Retry-After": "2"})
        return {"status": "ready", "family": state.engine.family, "deltas": len(state.engine.names)}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/deltas")
    async def deltas():
        eng = state.ready()
        return {"family": eng.family, "base": settings.base,
                "deltas": [asdict(eng.infos[n]) for n in sorted(eng.infos)]}

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest, request: Request):
        eng = state.ready()
        if eng.family != "bart":
            raise InputError("path", "this server serves a RoBERTa model: POST /v1/classify", 404)
        for name, v, cap in (("beam", req.beam, settings.max_beam), ("max_len", req.max_len, settings.max_len)):
            if v > cap:
                raise InputError(name, f"{name} {v} is out of range: this server allows 1..{cap}")
        if req.nbest > req.beam:
            raise InputError("nbest", f"nbest {req.nbest} is more than beam {req.beam}")
        if req.min_len > req.max_len:
            raise InputError("min_len", f"min_len {req.min_len} is more than max_len {req.max_len}")
        tokens, deadline = _limits(req, eng, request, "generate")
        job = Job("generate", req.delta, tokens, (req.beam, req.max_len, float(req.lenpen), req.min_len), deadline)
        hyps = await _wait(request, job)
        return {"delta": req.delta, "hypotheses": [
            {"text": eng.decode(h["tokens"]), "tokens": h["tokens"].tolist(), "score": float(h["score"])}
            for h in hyps[:req.nbest]]}

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest, request: Request):
        eng = state.ready()
        if eng.family != "roberta":
            raise InputError("path", "this server serves a BART model: POST /v1/generate", 404)
        tokens, deadline = _limits(req, eng, request, "classify")
        heads = eng.heads(req.delta)
        if req.head not in heads:
            has = ", ".join(heads) or "none"
            raise InputError("head", f"{'the base' if req.delta is None else repr(req.delta)} has no head "
                             f"{req.head!r} (heads: {has})")
        logp = await _wait(request, Job("classify", req.delta, tokens, (req.head,), deadline))
        probs = [math.exp(float(x)) for x in logp[:heads[req.head]]]
        best = max(range(len(probs)), key=probs.__getitem__)
        return {"delta": req.delta, "head": req.head, "label": eng.label(best),
                "probabilities": {eng.label(i): p for i, p in enumerate(probs)}}

    # ------------------------------------------------------------ admin
    def _admin(request: Request) -> Engine:
        token = settings.admin_token
        if not token:
            raise InputError("authorization", "admin endpoints are off: start the server with --admin-token "
                             "(or $UNIFAIRSEQ_SERVE_ADMIN_TOKEN)", 403)
        given = request.headers.get("authorization", "")
        given = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), token.encode()):  # constant time in the token's content
            raise InputError("authorization", "missing or wrong admin token (Authorization: Bearer TOKEN)", 401)
        eng = state.ready()
        if state.draining:
            raise Refused(503, "the server is shutting down")
        return eng

    @app.put("/v1/deltas/{name}", status_code=201)
    async def put_delta(name: str, request: Request):
        eng = _admin(request)
        request.state.delta = name
        path = resolve_in(eng.delta_dirs, name)
        if eng.has(name):
            raise InputError("name", f"a delta named {name!r} is already served; DELETE it first", 409)
        info = await asyncio.wrap_future(state.scheduler.call(eng.add, name, path))
        return asdict(info)

    @app.delete("/v1/deltas/{name}")
    async def delete_delta(name: str, request: Request):
        eng = _admin(request)
        request.state.delta = name
        await asyncio.wrap_future(state.scheduler.call(eng.remove, name))
        return {"removed": name}

    return LimitsAndLog(app, state, settings.max_request_bytes)


class _TooLarge(Exception):
    pass


TOO_LARGE = "unifairseq.too_large"  # a scope key: the body passed --max-request-bytes while it streamed in


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "body", f"the request body is over {limit} bytes (--max-request-bytes)")


class LimitsAndLog:
    """ASGI middleware: bodies over --max-request-bytes answered 413 (by Content-Length, or while a
    chunked body streams in); one JSON access-log line per request; the per-delta request counts."""

    def __init__(self, app: FastAPI, state: State, max_bytes: int):
        self.app, self.state, self.max_bytes = app, state, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, seen, status = time.perf_counter(), 0, [0]

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI answers an error while reading the body as its own 400: the flag lets the
                    # error handler answer 413 instead
                    scope[TOO_LARGE] = True
                    raise _TooLarge()
            return msg

        async def tracked_send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        rid = headers.get(b"x-request-id", b"")[:64].decode("ascii", "replace") or None
        try:
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise _TooLarge()
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if status[0] == 0:
                await _too_large(self.max_bytes)(scope, receive, tracked_send)
        self._log(scope, status[0] or 499, time.perf_counter() - start, rid)

    def _log(self, scope, status: int, seconds: float, rid: Optional[str]) -> None:
        path = scope.get("path", "")
        delta = (scope.get("state") or {}).get("delta")
        m = self.state.metrics
        if path in ("/v1/generate", "/v1/classify"):
            endpoint = path.rsplit("/", 1)[1]
            eng = self.state.engine
            # a label per served delta only: names a client made up must not grow the series without bound
            label = "(base)" if delta is None else (delta if eng is not None and eng.has(delta) else "(unknown)")
            m.requests.inc(endpoint, label, str(status))
            m.latency.observe(seconds, endpoint)
        client = scope.get("client") or ("", 0)
        access_log.info(json.dumps({"ts": round(time.time(), 3), "method": scope.get("method"), "path": path,
                                    "status": status, "ms": round(seconds * 1000, 2), "delta": delta,
                                    "client": f"{client[0]}:{client[1]}", "request_id": rid}))
