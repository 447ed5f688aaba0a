"""The HTTP gateway: the mesh's front door.

`POST /api/chat` turns a customer message into a saga (published through JetStream with a publish ack),
waits for the reply up to the deadline, and otherwise answers 202 so the client follows up with
`GET /api/chat/{message_id}` or the server-sent events of `/api/chat/{message_id}/events`.

Who is asking comes from `Authorization: Bearer <JWT>` (gateway/auth.py), never from a body; without a token the
caller is a guest. Every read answers only the owner of what it reads, else 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import Caller, caller_from, mint_token, new_session_id
from gateway.idempotency import IDEMPOTENCY_HEADER, earlier_attempt, message_id_for
from gateway.ratelimit import RateLimited, RateLimiter, guarded, handle_rate_limited, rate_limit
from gateway.replies import REPLIES, ReplyRouter
from gateway.schemas import ChatPending, ChatRequest, ChatResponse, DemoSignIn, SessionCreated
from gateway.unavailable import RETRY_AFTER_S, UNAVAILABLE, handle_unavailable, route_template
from observability import metrics
from observability.tracing import (
    current_trace_id,
    inject_headers,
    messaging_attributes,
    messaging_span_name,
    tracer,
)
from saga.log import TERMINAL, SagaEvent, SagaLog
from saga.protocol import GUEST_EMAIL, HAPPY_PATH, MESSAGE_ID, SESSION_ID, new_message, subject_for
from saga.protocol import Message as SagaMessage
from saga.results import ChatResult, ResultStore
from saga.transport import connect, ensure_stream, msg_id, publish, record_start
from supportmesh.config import Settings, get_settings

log = logging.getLogger("supportmesh.gateway")

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BODY_BYTES = 64 * 1024
# How long a JetStream request (a KV read, a publish ack) may take before the gateway gives up on it: a read
# then answers 503 with Retry-After, a start that cannot be recorded 503 (nothing started).
STORE_TIMEOUT_S = 5.0
# How long clients (the widget, `supportmesh chat`) follow a message before giving up with its id: longer than
# recovery takes (redeliveries, the sweeper) on a healthy mesh, short enough that nobody waits forever.
FOLLOW_TIMEOUT_S = 180.0
# A stream with no new event for this long closes (the client then polls `GET /api/chat/{id}`).
STREAM_IDLE_TIMEOUT_S = 120.0
# After a `saga_failed`, how often the stream looks for an answer given with no event after it.
FAILED_RESULT_POLL_S = 0.25
# `saga_failed` of a saga that never started (`saga.log` reason): there is no answer to wait for.
NOT_STARTED = "not_started"
EVENTS_ROUTE = "/api/chat/{message_id}/events"


class BodyTooLarge(HTTPException):
    """Raised while reading a body that grew past the limit (FastAPI passes HTTPExceptions through)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_bytes} bytes")


class BodyLimit:
    """Refuses bodies larger than `max_bytes` with 413 (a client mistake, never a 500): at once when the
    declared Content-Length is too large, and while reading when a body without one (chunked) grows past
    the limit. A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` costs a task and a stream per
    request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Routes turn it into the same 413 themselves; this covers anything that reads a body otherwise.
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await refused(scope, receive, send)


# The widget and timeline pages load scripts and styles from /static only (no inline script or style), talk to
# this origin only, and are framed by nobody, or only by the shops' pages of SUPPORTMESH_ALLOWED_ORIGINS.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# Swagger UI (when turned on) loads its script from a CDN with an inline bootstrap: no CSP there.
DOCS_PATHS = ("/docs", "/redoc")
# What a shop's page may send and read (CORS): the API's methods and request headers, and the response headers
# the widget reads. A preflight is cached by the browser for CORS_MAX_AGE_S.
CORS_METHODS = ["GET", "POST", "OPTIONS"]
CORS_HEADERS = ["Authorization", "Content-Type", "Prefer", "X-Session-Id", "Idempotency-Key"]
CORS_EXPOSE = ["Retry-After", "Preference-Applied"]
CORS_MAX_AGE_S = 600


def security_headers(frame_ancestors: list[str]) -> tuple[list[tuple[bytes, bytes]], str]:
    """The security headers and the CSP when the pages may be framed by `frame_ancestors` (origins).

    Nobody may frame them by default (`frame-ancestors 'none'` and X-Frame-Options DENY); with allowed origins
    the CSP names them and X-Frame-Options is left out: it cannot name a list, and browsers that know CSP
    follow `frame-ancestors` instead."""
    if not frame_ancestors:
        return SECURITY_HEADERS, CONTENT_SECURITY_POLICY
    csp = CONTENT_SECURITY_POLICY.replace("frame-ancestors 'none'",
                                          "frame-ancestors 'self' " + " ".join(frame_ancestors))
    return [h for h in SECURITY_HEADERS if h[0] != b"x-frame-options"], csp


class SecurityHeaders:
    """Adds the security headers to every HTTP response (the CSP to all but the API docs pages). A plain ASGI
    middleware, like BodyLimit."""

    def __init__(self, app: ASGIApp, frame_ancestors: list[str] | None = None) -> None:
        self.app = app
        self.headers, csp = security_headers(frame_ancestors or [])
        self.page_headers = [*self.headers, (b"content-security-policy", csp.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            docs = str(scope.get("path", "")).startswith(DOCS_PATHS)
            send = _adding_headers(send, self.headers if docs else self.page_headers)
        await self.app(scope, receive, send)


def _adding_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """`send` with `headers` added to the response's start (those the response sets itself are kept)."""

    async def adding(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in headers if h[0] not in present)]
        await send(message)

    return adding


class CountResponses:
    """Counts every response by route template and status class (`supportmesh_gateway_responses_total`), for
    the 5xx-rate alert. An exception that escapes the app becomes Starlette's 500: counted as 5xx here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except asyncio.CancelledError:  # the client went away: its answer, if any was started, is counted
            raise
        except BaseException:
            status = status or 500
            raise
        finally:
            if status is not None:
                metrics.GATEWAY_RESPONSES.labels(route_template(scope), f"{status // 100}xx").inc()


class Gateway:
    """The gateway's connections and stores, opened once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nc: Any = None
        self.js: Any = None
        self.saga: SagaLog
        self.results: ResultStore
        self.replies: ReplyRouter
        self.sessions: Any = None
        self.history: Any = None

    async def start(self) -> None:
        """Connect to NATS, Redis and SQLite; declare the stream and buckets; listen for replies."""
        s = self.settings
        self.nc = await connect(s, "supportmesh-gateway", max_reconnect_attempts=-1, reconnect_time_wait=0.25)
        self.js = self.nc.jetstream(timeout=STORE_TIMEOUT_S)
        await ensure_stream(self.js, s)
        self.saga = await SagaLog.open(self.js, ttl_s=s.saga_ttl_s, read_timeout_s=STORE_TIMEOUT_S,
                                       log_max_bytes=s.saga_log_max_bytes, state_max_bytes=s.saga_state_max_bytes)
        self.results = await ResultStore.open(self.js, ttl_s=s.saga_ttl_s, max_bytes=s.chat_results_max_bytes)
        self.replies = ReplyRouter(self.nc)
        await self.replies.start()
        from gateway.history import HistoryStore
        from gateway.sessions import SessionStore

        self.sessions = SessionStore(s.redis_dsn, ttl_s=s.session_ttl_s)
        self.history = HistoryStore(s.sqlite_path)
        await self.history.open()

    def require_nats(self) -> None:
        """Fail fast while the NATS connection is down: a read would otherwise wait out its timeout before the
        503 it is bound to get (nats-py buffers requests while it reconnects)."""
        if self.nc is None or not self.nc.is_connected:
            raise nats.errors.ConnectionReconnectingError

    async def stop(self) -> None:
        """Close everything opened by `start`."""
        with contextlib.suppress(Exception):
            await self.replies.stop()
        if self.history is not None:
            with contextlib.suppress(Exception):
                await self.history.close()
        if self.sessions is not None:
            with contextlib.suppress(Exception):
                await self.sessions.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway application."""
    settings = settings or get_settings()
    gw = Gateway(settings)
    metrics.init_gateway_series()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()
            await app.state.rate_limiter.close()

    docs = settings.api_docs
    app = FastAPI(
        title="supportmesh gateway",
        version="0.1.0",
        description="Customer-support agent over an actor mesh with durable sagas.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        dependencies=[Depends(rate_limit)],
    )
    app.state.gateway = gw
    app.state.rate_limiter = RateLimiter(settings)
    web_dir = Path(settings.web_dir) if settings.web_dir else DEFAULT_WEB_DIR

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(CountResponses)
    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, handle_unavailable)
    # Shops' pages on other origins (SUPPORTMESH_ALLOWED_ORIGINS) may call the API. Outside the body limit and
    # the routes (the rate limits are route dependencies), so a preflight is answered here before either sees
    # it, and every answer to an allowed origin, a 401, 413 or 429 included, carries Access-Control-Allow-Origin
    # (the embedded widget can read the error). An unlisted origin's preflight gets 400 and no CORS header: the
    # browser sends nothing more. No credentials mode: the token travels in the Authorization header, never in a
    # cookie. The lists are exact (no wildcard: supportmesh/config.py parse_origins).
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origin_list, allow_methods=CORS_METHODS,
                       allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSE, allow_credentials=False,
                       max_age=CORS_MAX_AGE_S)
    app.add_middleware(SecurityHeaders, frame_ancestors=settings.allowed_origin_list)
    app.add_exception_handler(RateLimited, handle_rate_limited)

    def caller(request: Request) -> Caller:
        """Who sent the request (401 for a token that proves nothing)."""
        return caller_from(request, settings.auth_secret, settings.auth_leeway_s)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "reason": e.get("msg", "")}
            for e in exc.errors()
        ]
        reason = "; ".join(f"{e['field'] or 'body'}: {e['reason']}" for e in errors)
        return JSONResponse({"detail": reason or "invalid request", "errors": errors}, status_code=422)

    @app.post(
        "/api/chat",
        response_model=ChatResponse,
        responses={202: {"model": ChatPending}, 413: {"description": "body too large"},
                   503: {"description": "not accepted (nothing was started): safe to send again after Retry-After"}},
    )
    async def chat(
        body: ChatRequest,
        request: Request,
        prefer: str | None = Header(default=None, description="`respond-async`: answer 202 with the message id "
                                    "at once and follow the saga's events (what the widget does)"),
        idempotency_key: str | None = Header(default=None, alias=IDEMPOTENCY_HEADER,
                                             description="the same key (per customer and session) and message "
                                             "answer with the same saga, never a second one"),
    ) -> Any:
        """Send a customer message; the answer within the deadline, or 202 and the message id.

        With `Authorization: Bearer <token>` the customer is the token's `sub` (a body `customer_email` naming
        someone else is refused with 403); without one the chat is a guest chat (general answers, and the status
        of one order given by its number and the `customer_email` it was placed with; never an action)."""
        who = caller(request)
        if who.verified and body.customer_email and body.customer_email != who.email:
            raise HTTPException(403, "customer_email does not match the signed-in customer")
        await _claim_session(gw, body.session_id, who)
        started = time.perf_counter()
        metrics.CHATS_IN_FLIGHT.inc()
        message = new_message(
            session_id=body.session_id,
            customer_email=who.email or body.customer_email or GUEST_EMAIL,
            customer_message=body.message,
            steps=HAPPY_PATH,
            reply_subject=gw.replies.subject,
            deadline_s=settings.chat_deadline_s,
            customer_verified=who.verified,
            message_id=message_id_for(who.owner, body.session_id, idempotency_key) if idempotency_key else None,
        )
        trace_id = current_trace_id()
        message = message.model_copy(update={"metadata": message.metadata.model_copy(update={"trace_id": trace_id})})
        waiter = gw.replies.expect(message.message_id)
        try:
            # A retry with the same Idempotency-Key follows the first attempt's saga: nothing is started again.
            again = idempotency_key is not None and await earlier_attempt(gw.saga, message.message_id, body.message)
            if not again:
                try:
                    # The session is marked active before publishing, so the aggregator's final status is never
                    # overwritten by "active"; it is written alongside the saga's start (independent writes).
                    _, started_here = await asyncio.gather(
                        _touch_session(gw, body.session_id, message.message_id, "active"),
                        record_start(gw.saga, message),
                    )
                except Exception as exc:
                    log.exception("could not record the start of the saga")
                    raise HTTPException(503, f"the mesh is not accepting messages right now: {type(exc).__name__}",
                                        headers={"Retry-After": str(RETRY_AFTER_S)})
                again = not started_here  # a concurrent attempt with the same key recorded it first
            # From here on the saga exists: if the publish fails, the sweeper starts it from the log. Answering
            # 503 now would make the client send it again and start a second saga, so it gets its id (202).
            # Only the attempt that recorded the start publishes; a repeated one waits for the same answer.
            published = True if again else await _publish_first_step(gw, message)
            if again and (stored := await gw.results.get(message.message_id)) is not None:
                return _response(stored)
            pending = JSONResponse(ChatPending(message_id=message.message_id, trace_id=trace_id).model_dump(),
                                   status_code=202)
            if published and _respond_async(prefer):
                pending.headers["Preference-Applied"] = "respond-async"
                return pending
            result = await _wait_for_result(gw, message.message_id, waiter, settings.chat_deadline_s) \
                if published else None
            if result is None:
                metrics.observe(metrics.CHAT_LATENCY_SECONDS.labels("processing"), time.perf_counter() - started)
                return pending
            metrics.observe(metrics.CHAT_LATENCY_SECONDS.labels(result.status), time.perf_counter() - started)
            return _response(result)
        finally:
            # Always, whether answered, timed out, failed or cancelled by a client that went away.
            gw.replies.forget(message.message_id, waiter)
            metrics.CHATS_IN_FLIGHT.dec()

    @app.get("/api/chat/{message_id}", response_model=ChatResponse, responses={202: {"model": ChatPending}})
    async def chat_outcome(message_id: str, request: Request) -> Any:
        """The outcome of a message: 200 when finished, 202 while its saga runs, 404 if unknown (or not the
        caller's: a customer's token, or for a guest the session id in `X-Session-Id`)."""
        _check_id(message_id)
        who = caller(request)
        gw.require_nats()
        result = await gw.results.get(message_id)
        if result is not None:
            if not who.may_read(result.owner, result.session_id):
                raise HTTPException(404, f"no message {message_id}")
            return _response(result)
        state = await gw.saga.state(message_id)
        if state is None or not who.may_read(state.owner, state.session_id):
            raise HTTPException(404, f"no message {message_id}")
        return JSONResponse(ChatPending(message_id=message_id, trace_id=state.trace_id).model_dump(), status_code=202)

    @app.get(EVENTS_ROUTE)
    async def chat_events(message_id: str, request: Request) -> EventSourceResponse:
        """Server-sent events of the saga: its history, then live events, then the result; then close."""
        _check_id(message_id)
        who = caller(request)
        gw.require_nats()
        state, result = await asyncio.gather(gw.saga.state(message_id), gw.results.get(message_id))
        if not any(r is not None and who.may_read(r.owner, r.session_id) for r in (state, result)):
            raise HTTPException(404, f"no message {message_id}")
        slot = await app.state.rate_limiter.open_stream(EVENTS_ROUTE, request)
        stream = guarded(_event_stream(gw, message_id, request), slot)
        return EventSourceResponse(stream, ping=10, background=BackgroundTask(slot.release) if slot else None)

    @app.get("/api/sagas/{message_id}")
    async def saga(message_id: str, request: Request) -> dict[str, Any]:
        """The saga log of one message: its state, every event in order, and the result (the owner's only)."""
        _check_id(message_id)
        who = caller(request)
        gw.require_nats()
        state, events, result = await asyncio.gather(
            gw.saga.state(message_id), gw.saga.history(message_id), gw.results.get(message_id)
        )
        if state is None and not events:
            raise HTTPException(404, f"no saga for message {message_id}")
        if not any(r is not None and who.may_read(r.owner, r.session_id) for r in (state, result)):
            raise HTTPException(404, f"no saga for message {message_id}")
        state_doc = state.model_dump(mode="json", exclude={"revision"}) if state else None
        if state_doc is not None and events:
            # The log is where the saga is: its last event (the state record changes on transitions only).
            state_doc.update(step_index=events[-1].step_index, actor=events[-1].actor, updated_at=events[-1].ts)
        return {
            "message_id": message_id,
            "state": state_doc,
            "events": [e.model_dump(mode="json") for e in events],
            "result": result.model_dump(mode="json") if result else None,
        }

    @app.post("/api/sessions", response_model=SessionCreated, status_code=201)
    async def create_session(request: Request) -> SessionCreated:
        """A fresh, unguessable session id bound to the caller (the signed-in customer, or the guest holding it)."""
        who = caller(request)
        session_id = new_session_id()
        await _claim_session(gw, session_id, who)
        return SessionCreated(session_id=session_id, signed_in=who.verified)

    @app.get("/api/sessions/{session_id}/history")
    async def session_history(session_id: str, request: Request, limit: int = 200) -> dict[str, Any]:
        """The conversation of a session, oldest first (from SQLite); only its owner's (a guest's session is
        read with its id, which is the guest's proof)."""
        if not SESSION_ID.match(session_id):
            raise HTTPException(422, "session_id must be 1-64 characters of [A-Za-z0-9_-]")
        who = caller(request)
        try:
            owner = await gw.sessions.get_owner(session_id)
        except Exception:
            raise HTTPException(503, "cannot check the session's owner right now") from None
        if not Caller(email=who.email, session_id=session_id).may_read(owner, session_id):
            raise HTTPException(404, f"no session {session_id}")
        limit = max(1, min(limit, 1000))
        rows = await gw.history.history(session_id, limit=limit)
        return {"session_id": session_id, "messages": [_history_row(r) for r in rows]}

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        """What the widget needs to know."""
        return {
            "jaeger_ui_url": settings.jaeger_ui_url,
            "chat_deadline_s": settings.chat_deadline_s,
            "follow_timeout_s": FOLLOW_TIMEOUT_S,
            "demo_sign_in": settings.demo_sign_in,
        }

    if settings.demo_sign_in:
        from mocks.data import build_seed

        demo_customers = {c["email"]: c for c in build_seed()["customers"].values()}

        @app.get("/api/demo/customers")
        async def demo_customers_list() -> dict[str, Any]:
            """The seeded demo customers one may sign in as (local demo only: SUPPORTMESH_DEMO_SIGN_IN)."""
            return {"customers": [{"email": c["email"], "name": c["name"]} for c in demo_customers.values()]}

        @app.post("/api/demo/sign-in")
        async def demo_sign_in(body: DemoSignIn) -> dict[str, Any]:
            """A short-lived token for a seeded demo customer (local demo only: SUPPORTMESH_DEMO_SIGN_IN)."""
            customer = demo_customers.get(body.email.lower())
            if customer is None:
                raise HTTPException(404, "not a demo customer")
            if not settings.auth_secret:
                raise HTTPException(503, "this gateway has no auth secret: it cannot sign anyone in")
            token = mint_token(settings.auth_secret, customer["email"], settings.demo_token_ttl_s)
            return {"token": token, "email": customer["email"], "name": customer["name"],
                    "expires_in": settings.demo_token_ttl_s}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: NATS, the stream, Redis and SQLite are reachable."""
        checks: dict[str, str] = {}

        async def check(name: str, probe: Any) -> None:
            try:
                await asyncio.wait_for(probe(), timeout=2)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {type(exc).__name__}"

        await asyncio.gather(
            check("nats", lambda: gw.nc.flush(timeout=1)),
            check("stream", lambda: gw.js.stream_info(settings.stream_name)),
            check("redis", gw.sessions.ping),
            check("sqlite", gw.history.ping),
        )
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

    @app.get("/", include_in_schema=False)
    @app.get("/widget.html", include_in_schema=False)
    async def widget() -> FileResponse:
        return FileResponse(web_dir / "widget.html")

    @app.get("/saga.html", include_in_schema=False)
    async def saga_page() -> FileResponse:
        return FileResponse(web_dir / "saga.html")

    if (web_dir / "static").is_dir():
        app.mount("/static", StaticFiles(directory=web_dir / "static"), name="static")

    return app


def _check_id(message_id: str) -> None:
    if not MESSAGE_ID.match(message_id):
        raise HTTPException(422, "message_id must be 1-64 characters of [A-Za-z0-9_-]")


def _response(result: ChatResult) -> dict[str, Any]:
    return ChatResponse(
        message_id=result.message_id,
        session_id=result.session_id,
        status=result.status,
        response=result.response,
        action_plan=result.action_plan,
        execution_result=result.execution_result,
        trace_id=result.trace_id,
    ).model_dump()


def _history_row(row: Any) -> dict[str, Any]:
    data = dict(row) if not isinstance(row, dict) else row
    trace = data.get("route_trace")
    if isinstance(trace, str):
        with contextlib.suppress(Exception):
            trace = orjson.loads(trace)
    return {
        "message_id": data.get("message_id"),
        "timestamp": data.get("timestamp"),
        "sender": data.get("sender"),
        "content": data.get("content"),
        "route_trace": trace,
    }


async def _publish_first_step(gw: Gateway, message: SagaMessage, attempts: int = 3) -> bool:
    """Publish the saga's first step, retrying briefly (the same Nats-Msg-Id, so never twice); False when
    JetStream would not take it (the sweeper will)."""
    subject = subject_for(message.route.current)
    for attempt in range(1, attempts + 1):
        try:
            with tracer().start_as_current_span(
                messaging_span_name("publish", subject), kind=SpanKind.PRODUCER,
                attributes=messaging_attributes("publish", subject, message.message_id, msg_id(message)),
            ):
                await publish(gw.js, message, inject_headers())
            return True
        except Exception:
            log.warning("publishing the first step failed (attempt %d of %d)", attempt, attempts,
                        exc_info=True, extra={"message_id": message.message_id})
            if attempt < attempts:
                await asyncio.sleep(0.25 * attempt)
    return False


def _respond_async(prefer: str | None) -> bool:
    """RFC 7240 `Prefer: respond-async`."""
    return bool(prefer) and "respond-async" in [p.strip().lower() for p in prefer.split(",")]


async def _wait_for_result(gw: Gateway, message_id: str, waiter: asyncio.Future[ChatResult],
                           deadline_s: float) -> ChatResult | None:
    """The reply on this instance's subject within the deadline; past it, the KV copy if there is one.
    The caller forgets the waiter (in every case, cancellation included)."""
    try:
        result = await asyncio.wait_for(waiter, timeout=deadline_s)
    except TimeoutError:
        # The reply may have been published while this gateway was reconnecting (or to another instance).
        try:
            result = await gw.results.get(message_id)
        except UNAVAILABLE:
            return None  # the saga exists: 202, the client follows it (a 503 would make it send a second one)
        if result is not None:
            REPLIES.labels("kv").inc()
        return result
    REPLIES.labels("subject").inc()
    return result


async def _claim_session(gw: Gateway, session_id: str, who: Caller) -> None:
    """Make sure the session is the caller's: an unknown id is bound to the caller (a client may propose one);
    an id bound to someone else, or one with history but no owner, is refused (403)."""
    try:
        owner = await gw.sessions.get_owner(session_id, refresh_s=gw.settings.saga_ttl_s)
        if owner is None:
            if await gw.history.has_session(session_id):
                owner = "unknown"  # recorded before owners were (or its binding expired): nobody may take it over
            else:
                owner = await gw.sessions.claim(session_id, who.owner, gw.settings.saga_ttl_s)
    except Exception as exc:
        log.warning("could not check the owner of a session", exc_info=True)
        raise HTTPException(503, f"cannot check the session's owner right now: {type(exc).__name__}") from None
    if owner != who.owner:
        raise HTTPException(403, "this session belongs to someone else: start a new one (POST /api/sessions)")


async def _touch_session(gw: Gateway, session_id: str, message_id: str, status: str) -> None:
    try:
        await gw.sessions.set_state(session_id, last_message_id=message_id, status=status)
    except Exception:
        # Session state helps follow-ups; losing it must not lose the customer's message.
        log.warning("could not update session state", exc_info=True)


async def _event_stream(gw: Gateway, message_id: str, request: Request, *,
                        idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S) -> AsyncIterator[dict[str, str]]:
    """The saga's history, then its live events, then its result; then the stream closes.

    Every answered route ends with `saga_completed`, a failed saga's too (its answer is delivered by the
    response aggregator after `saga_failed`), so that closes the stream. After a `saga_failed` the stream
    also closes once the saga's state is final and its result stored: the answer was given directly (the
    aggregator is what failed), and no further event comes. A saga failed before it started has no answer
    (nobody waits for one): its `saga_failed` closes the stream. With no event for `idle_timeout_s` (and no
    answer), the stream closes and the client falls back to `GET /api/chat/{id}`. When NATS stops answering
    mid-stream, an `unavailable` event says so and the stream closes (the client polls, as on any break)."""
    events = gw.saga.watch(message_id, idle_timeout_s=idle_timeout_s)
    pending: asyncio.Future[SagaEvent] | None = None
    failed = False
    last_revision = 0
    idle_since = time.monotonic()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            # After a saga_failed, look for the answer now and then: it may be stored with no event after it.
            await asyncio.wait({pending}, timeout=FAILED_RESULT_POLL_S if failed else idle_timeout_s)
            if await request.is_disconnected():
                return
            if pending.done():
                try:
                    event = pending.result()
                except StopAsyncIteration:  # no event for idle_timeout_s: the watcher stopped
                    return
                pending = None
                idle_since = time.monotonic()
                last_revision = event.revision or last_revision
                yield {"event": "saga", "data": event.model_dump_json()}
                if event.kind == "saga_completed":
                    result = await _stored_result(gw, message_id)
                    if result is not None:
                        yield {"event": "result", "data": result.model_dump_json()}
                    return
                if event.kind == "saga_failed" and event.data.get("reason") == NOT_STARTED:
                    return
                failed = failed or event.kind == "saga_failed"
            elif time.monotonic() - idle_since >= idle_timeout_s:
                return
            if failed and (result := await _answer_given_directly(gw, message_id)) is not None:
                # Whatever the log holds past what was sent (the watcher may not have handed it over yet).
                for late in await gw.saga.history(message_id):
                    if (late.revision or 0) > last_revision:
                        yield {"event": "saga", "data": late.model_dump_json()}
                yield {"event": "result", "data": result.model_dump_json()}
                return
    except UNAVAILABLE as exc:
        metrics.GATEWAY_UNAVAILABLE.labels(EVENTS_ROUTE).inc()
        log.warning("event stream of %s closed: %s", message_id, type(exc).__name__)
        yield {"event": "unavailable", "data": orjson.dumps({"retry_after_s": RETRY_AFTER_S}).decode()}
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, *UNAVAILABLE):
                await pending
        with contextlib.suppress(*UNAVAILABLE):
            await events.aclose()


async def _stored_result(gw: Gateway, message_id: str, wait_s: float = 5.0) -> ChatResult | None:
    """The result of a completed saga: stored before `saga_completed`, read again briefly in case the KV read
    lags behind the watcher."""
    deadline = time.monotonic() + wait_s
    while True:
        result = await gw.results.get(message_id)
        if result is not None or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(0.1)


async def _answer_given_directly(gw: Gateway, message_id: str) -> ChatResult | None:
    """The answer of a failed saga once nothing more will happen to it: its state is final and its result
    stored. While the response aggregator delivers the answer, the state is not final yet (it becomes final
    after `saga_completed`), so the aggregator's events are not cut off."""
    state = await gw.saga.state(message_id)
    if state is None or state.status not in TERMINAL:
        return None
    return await gw.results.get(message_id)
