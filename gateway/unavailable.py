"""A backing store that does not answer is "unavailable", never an internal error.

Reads of the saga log, results and session state go to NATS, Redis and SQLite. Under load, while nats-server
restarts or a replica is being killed, such a read can time out or find the connection closed: the gateway then
answers **503 with `Retry-After`** (the client may simply ask again), counts it in
`supportmesh_gateway_unavailable_total{route}`, and never answers 500 for it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import nats.errors
import nats.js.errors
import redis.exceptions
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import Scope

from observability import metrics
from saga.direct import DirectGetError

log = logging.getLogger("supportmesh.gateway")

RETRY_AFTER_S = 1

# What "the store did not answer" looks like from each client library. Programming errors (a bad subject, a
# validation error) are not in this list: they stay 500s and are fixed, not retried.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,  # nats.errors.TimeoutError is one too
    ConnectionError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.ServiceUnavailableError,  # also a full bucket or stream: 503 "maximum bytes exceeded" (10077)
    nats.js.errors.ServerError,
    nats.js.errors.NoStreamResponseError,  # no stream leader took a publish (an election outlasting the retries)
    DirectGetError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlite3.OperationalError,  # "database is locked", a full or unreachable disk
)


def route_template(scope: Scope) -> str:
    """The route template (`/api/sagas/{message_id}`), never the URL: labels stay bounded, ids stay out."""
    return getattr(scope.get("route"), "path", "unmatched")


def route_of(request: Request) -> str:
    """The route template of a request."""
    return route_template(request.scope)


def unavailable_response(route: str, exc: BaseException) -> JSONResponse:
    """503 with Retry-After, counted and logged."""
    metrics.GATEWAY_UNAVAILABLE.labels(route).inc()
    log.warning("answered 503 on %s: %s", route, type(exc).__name__)
    return JSONResponse(
        {"detail": f"the support service is briefly unavailable ({type(exc).__name__}); retry in {RETRY_AFTER_S} s"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def handle_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI exception handler for every class in UNAVAILABLE."""
    return unavailable_response(route_of(request), exc)
