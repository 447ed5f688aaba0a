"""The mock customer, orders and tracking APIs (one FastAPI app), with idempotent actions, their undo, human
handoff tickets, Prometheus metrics and fault injection."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mocks.faults import Faults
from mocks.store import Conflict, NotFound, Store, public
from observability.metrics import MOCK_API_LATENCY_SECONDS
from observability.tracing import RouteInServerSpan, fastapi_telemetry, name_server_span


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: float | None = Field(default=None, gt=0, le=1_000_000)
    reason: str = Field(default="", max_length=500)


class ReplacementBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)
    items: list[str] | None = None


class CancellationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


class TicketBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: str | None = Field(default=None, max_length=64)
    session_id: str | None = Field(default=None, max_length=64)
    customer_email: str | None = Field(default=None, max_length=254)
    reason: str = Field(default="", max_length=200)
    summary: str = Field(default="", max_length=4000)
    priority: Literal["low", "normal", "high", "urgent"] = "normal"


def create_app(faults: Faults | None = None) -> FastAPI:
    """The mock APIs app (state in memory, per app)."""
    store = Store()
    app = FastAPI(title="supportmesh mock commerce APIs", version="0.1.0",
                  telemetry=fastapi_telemetry())  # type: ignore[arg-type]
    app.state.store = store
    app.state.faults = faults or Faults.from_env()

    app.add_middleware(FaultsAndMetrics)
    app.add_middleware(RouteInServerSpan)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.get("/customers/{email}")
    async def get_customer(email: str) -> dict[str, Any]:
        return store.customer(email)

    @app.get("/customers/{email}/orders")
    async def get_customer_orders(email: str) -> dict[str, Any]:
        customer = store.customer(email)
        return {"customer_id": customer["id"], "orders": store.customer_orders(email)}

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> dict[str, Any]:
        return store.order(order_id)

    @app.get("/tracking/{tracking_id}")
    async def get_tracking(tracking_id: str) -> dict[str, Any]:
        return store.track(tracking_id)

    async def act(kind: str, order_id: str, key: str | None, body: BaseModel) -> JSONResponse:
        if not key:
            raise HTTPException(400, "the Idempotency-Key header is required for actions")
        action, replayed = await store.act(kind, order_id, key, body.model_dump())
        return JSONResponse(public(action), status_code=200 if replayed else 201,
                            headers={"Idempotent-Replayed": "true"} if replayed else None)

    @app.post("/orders/{order_id}/refunds", status_code=201)
    async def refund(order_id: str, body: RefundBody,
                     idempotency_key: str | None = Header(default=None)) -> JSONResponse:
        return await act("refund", order_id, idempotency_key, body)

    @app.post("/orders/{order_id}/replacements", status_code=201)
    async def replacement(order_id: str, body: ReplacementBody,
                          idempotency_key: str | None = Header(default=None)) -> JSONResponse:
        return await act("replacement", order_id, idempotency_key, body)

    @app.post("/orders/{order_id}/cancellation", status_code=201)
    async def cancellation(order_id: str, body: CancellationBody,
                           idempotency_key: str | None = Header(default=None)) -> JSONResponse:
        return await act("cancellation", order_id, idempotency_key, body)

    @app.post("/actions/{action_id}/undo")
    async def undo(action_id: str) -> dict[str, Any]:
        return public(await store.undo(action_id))

    @app.get("/orders/{order_id}/actions")
    async def order_actions(order_id: str) -> dict[str, Any]:
        return {"actions": [public(a) for a in store.order_actions(order_id)]}

    @app.post("/tickets", status_code=201)
    async def open_ticket(body: TicketBody, idempotency_key: str | None = Header(default=None)) -> JSONResponse:
        ticket, replayed = await store.ticket(idempotency_key, body.model_dump())
        return JSONResponse(ticket, status_code=200 if replayed else 201)

    @app.get("/tickets")
    async def list_tickets(message_id: str | None = None) -> dict[str, Any]:
        tickets = [t for t in store.tickets.values() if message_id is None or t.get("message_id") == message_id]
        return {"tickets": tickets}

    @app.get("/_admin/faults")
    async def get_faults() -> dict[str, Any]:
        return app.state.faults.as_dict()

    @app.put("/_admin/faults")
    async def put_faults(config: dict[str, Any]) -> dict[str, Any]:
        try:
            app.state.faults.set(config)
        except ValueError as exc:
            raise HTTPException(422, f"invalid fault settings: {exc}") from exc
        return app.state.faults.as_dict()

    @app.post("/_admin/reset")
    async def reset() -> dict[str, str]:
        store.reset()
        return {"status": "reset"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "mocks"}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

    return app


class FaultsAndMetrics:
    """Injects the configured faults and times every request (a plain ASGI middleware: Starlette's
    `BaseHTTPMiddleware` costs a task and a stream per request, a third of this process's CPU per call)."""

    UNFAULTED = ("/_admin", "/metrics", "/healthz")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        fastapi_app = scope["app"]
        matched = _matched_route(fastapi_app, scope)
        # Known before the router runs: an injected fault's server span carries the template too.
        if matched is not None:
            scope["route"] = matched
        route, method = str(getattr(matched, "path", "unmatched")), scope["method"]
        try:
            verdict = "pass"
            if not scope["path"].startswith(self.UNFAULTED):
                verdict = await fastapi_app.state.faults.inject(f"{method} {route}")
            if verdict == "fail_after_effect":
                # The request is handled (its effect happens) but its answer is lost, as in a timeout.
                await self.app(scope, receive, _discard)
            if verdict != "pass":
                where = "after the effect" if verdict == "fail_after_effect" else "before the effect"
                injected = JSONResponse({"detail": f"injected fault on {method} {route} ({where})"}, status_code=503)
                if verdict == "fail_before" and matched is not None:  # answered before routing: FastAPI named none
                    name_server_span(method, route)
                await injected(scope, receive, send)
                return
            await self.app(scope, receive, send)
        finally:
            MOCK_API_LATENCY_SECONDS.labels(route, method).observe(time.perf_counter() - started)


async def _discard(message: Message) -> None:
    """An ASGI `send` that drops the response (see `fail_after_effect_rate`)."""


def _matched_route(app: FastAPI, scope: Scope) -> Any:
    """The route a request matches (its template labels metrics and keys faults, e.g. /orders/{order_id}), or
    None."""
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match.name == "FULL":
            return route
    return None
