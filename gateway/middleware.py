"""The gateway's ASGI middleware: the body limit, the response counter, the security headers, and CORS."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import Settings
from gateway.unavailable import route_template
from observability import metrics

MAX_BODY_BYTES = 64 * 1024


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



def add_middleware(app: FastAPI, settings: Settings) -> None:
    """Install the gateway's middleware on `app`, innermost first (Starlette wraps the last added outermost)."""
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(CountResponses)
    # Shops' pages on other origins (SUPPORTMESH_ALLOWED_ORIGINS) may call the API. Outside the body limit and
    # the routes (the rate limits are route dependencies), so a preflight is answered here before either sees
    # it, and every answer to an allowed origin, a 401, 413 or 429 included, carries Access-Control-Allow-Origin
    # (the embedded widget can read the error). An unlisted origin's preflight gets 400 and no CORS header: the
    # browser sends nothing more. No credentials mode: the token travels in the Authorization header, never in a
    # cookie. The lists are exact (no wildcard: config/settings.py parse_origins).
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origin_list, allow_methods=CORS_METHODS,
                       allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSE, allow_credentials=False,
                       max_age=CORS_MAX_AGE_S)
    app.add_middleware(SecurityHeaders, frame_ancestors=settings.allowed_origin_list)
