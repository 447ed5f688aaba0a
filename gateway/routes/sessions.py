"""`POST /api/sessions` (a fresh session bound to the caller), a session's history, and its live events (an
agent's replies and the close of a hand-over, gateway/live.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from gateway.auth import Caller, new_session_id
from gateway.live import session_events
from gateway.ratelimit import guarded
from gateway.routes.common import caller, claim_session
from gateway.schemas import SessionCreated
from gateway.state import Gateway
from saga.protocol import SESSION_ID


def sessions_router(gw: Gateway) -> APIRouter:
    """The session routes."""
    settings = gw.settings
    router = APIRouter()

    @router.post("/api/sessions", response_model=SessionCreated, status_code=201)
    async def create_session(request: Request) -> SessionCreated:
        """A fresh, unguessable session id bound to the caller (the signed-in customer, or the guest holding it)."""
        who = caller(request, settings)
        session_id = new_session_id()
        await claim_session(gw, session_id, who)
        return SessionCreated(session_id=session_id, signed_in=who.verified)

    async def check_owner(session_id: str, request: Request) -> None:
        """404 unless the caller owns the session (a guest's session is read with its id, the guest's proof)."""
        check_session_id(session_id)
        who = caller(request, settings)
        try:
            owner = await gw.sessions.get_owner(session_id)
        except Exception:
            raise HTTPException(503, "cannot check the session's owner right now") from None
        if not Caller(email=who.email, session_id=session_id).may_read(owner, session_id):
            raise HTTPException(404, f"no session {session_id}")

    @router.get("/api/sessions/{session_id}/history")
    async def session_history(session_id: str, request: Request, limit: int = 200) -> dict[str, Any]:
        """The conversation of a session, oldest first (from SQLite); only its owner's."""
        await check_owner(session_id, request)
        return {"session_id": session_id, "messages": await history_rows(gw, session_id, limit)}

    @router.get(SESSION_EVENTS_ROUTE)
    async def session_event_stream(session_id: str, request: Request) -> EventSourceResponse:
        """Server-sent events of a session, live, while the client listens (only its owner's): `open`, then an
        agent's replies (`agent_reply`) and the close of a hand-over (`handover_closed`). Counts against the
        caller's open-stream cap, like a saga's events."""
        await check_owner(session_id, request)
        gw.require_nats()
        slot = await request.app.state.rate_limiter.open_stream(SESSION_EVENTS_ROUTE, request)
        stream = guarded(session_events(gw.nc, session_id, request), slot)
        return EventSourceResponse(stream, ping=10, background=BackgroundTask(slot.release) if slot else None)

    return router


SESSION_EVENTS_ROUTE = "/api/sessions/{session_id}/events"


def check_session_id(session_id: str) -> None:
    """422 unless `session_id` has the shape of a session id."""
    if not SESSION_ID.match(session_id):
        raise HTTPException(422, "session_id must be 1-64 characters of [A-Za-z0-9_-]")


async def history_rows(gw: Gateway, session_id: str, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` (1-1000) messages of a session, oldest first, as the API shows them."""
    rows = await gw.history.history(session_id, limit=max(1, min(limit, 1000)))
    return [_history_row(r) for r in rows]


def _history_row(row: Any) -> dict[str, Any]:
    data = dict(row) if not isinstance(row, dict) else row
    trace = data.get("route_trace")
    if isinstance(trace, str):
        with contextlib.suppress(Exception):
            trace = orjson.loads(trace)
    # An agent's reply written in the console names its author (`console:<agent>`); the bot's have none.
    by = trace[0][len("console:"):] if isinstance(trace, list) and trace and str(trace[0]).startswith(
        "console:") else None
    return {
        "message_id": data.get("message_id"),
        "timestamp": data.get("timestamp"),
        "sender": data.get("sender"),
        "content": data.get("content"),
        "route_trace": trace,
        "agent": by,
    }
