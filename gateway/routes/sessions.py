"""`POST /api/sessions` (a fresh session bound to the caller) and a session's history."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request

from gateway.auth import Caller, new_session_id
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

    @router.get("/api/sessions/{session_id}/history")
    async def session_history(session_id: str, request: Request, limit: int = 200) -> dict[str, Any]:
        """The conversation of a session, oldest first (from SQLite); only its owner's (a guest's session is
        read with its id, which is the guest's proof)."""
        if not SESSION_ID.match(session_id):
            raise HTTPException(422, "session_id must be 1-64 characters of [A-Za-z0-9_-]")
        who = caller(request, settings)
        try:
            owner = await gw.sessions.get_owner(session_id)
        except Exception:
            raise HTTPException(503, "cannot check the session's owner right now") from None
        if not Caller(email=who.email, session_id=session_id).may_read(owner, session_id):
            raise HTTPException(404, f"no session {session_id}")
        limit = max(1, min(limit, 1000))
        rows = await gw.history.history(session_id, limit=limit)
        return {"session_id": session_id, "messages": [_history_row(r) for r in rows]}

    return router


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
