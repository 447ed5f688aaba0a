"""The HTTP gateway: the mesh's front door.

`POST /api/chat` turns a customer message into a saga (published through JetStream with a publish ack),
waits for the reply up to the deadline, and otherwise answers 202 so the client follows up with
`GET /api/chat/{message_id}` or the server-sent events of `/api/chat/{message_id}/events`.

Who is asking comes from `Authorization: Bearer <JWT>` (gateway/auth.py), never from a body; without a token the
caller is a guest. Every read answers only the owner of what it reads, else 404.

This module wires the parts: the process state (gateway/state.py), the middleware (gateway/middleware.py) and
the routes (gateway/routes/).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from actors import registry
from config.settings import Settings, get_settings
from gateway.middleware import add_middleware
from gateway.ratelimit import RateLimited, RateLimiter, handle_rate_limited, rate_limit
from gateway.routes.chat import chat_router
from gateway.routes.console import console_router
from gateway.routes.health import health_router
from gateway.routes.sagas import sagas_router
from gateway.routes.sessions import sessions_router
from gateway.routes.widget import DEFAULT_WEB_DIR, config_router, mount_static, pages_router
from gateway.state import Gateway
from gateway.unavailable import UNAVAILABLE, handle_unavailable
from observability import metrics
from observability.tracing import RouteInServerSpan, fastapi_telemetry


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway application."""
    settings = settings or get_settings()
    gw = Gateway(settings)
    metrics.init_gateway_series()
    # Every saga starts on the registry's chat route.
    chat_route = registry.route(registry.CHAT, actors=registry.active(settings))

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
        telemetry=fastapi_telemetry(),  # type: ignore[arg-type]
    )
    app.state.gateway = gw
    app.state.rate_limiter = RateLimiter(settings)
    web_dir = Path(settings.web_dir) if settings.web_dir else DEFAULT_WEB_DIR

    add_middleware(app, settings)
    app.add_middleware(RouteInServerSpan)
    for unavailable in UNAVAILABLE:
        app.add_exception_handler(unavailable, handle_unavailable)
    app.add_exception_handler(RateLimited, handle_rate_limited)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "reason": e.get("msg", "")}
            for e in exc.errors()
        ]
        reason = "; ".join(f"{e['field'] or 'body'}: {e['reason']}" for e in errors)
        return JSONResponse({"detail": reason or "invalid request", "errors": errors}, status_code=422)

    # In this order: it is the order of the OpenAPI document's paths. The app's rate-limit dependency applies
    # to the routes of every router included.
    app.include_router(chat_router(gw, chat_route))
    app.include_router(sagas_router(gw))
    app.include_router(sessions_router(gw))
    app.include_router(console_router(gw))
    app.include_router(config_router(settings))
    app.include_router(health_router(gw))
    app.include_router(pages_router(web_dir))
    mount_static(app, web_dir)
    return app

