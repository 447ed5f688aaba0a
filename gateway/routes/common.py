"""What several route modules share: who is asking, id checks, the chat answer's body, claiming a session."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, Request

from actors.results import ChatResult
from config.settings import Settings
from gateway.auth import Caller, caller_from, unauthorized
from gateway.schemas import ChatResponse
from gateway.state import Gateway
from saga.protocol import MESSAGE_ID

log = logging.getLogger("supportmesh.gateway")


def caller(request: Request, settings: Settings) -> Caller:
    """Who sent a request to a customer route (401 for a token that proves nothing; 403 for an agent's token:
    agents use the console's routes, never a customer's)."""
    who = caller_from(request, settings.auth_secret, settings.auth_leeway_s)
    if who.agent is not None:
        raise HTTPException(403, "an agent's token is not accepted here: use the console's API (/api/console)")
    return who


def agent_caller(request: Request, settings: Settings) -> Caller:
    """The support agent sending a request to a console route: 401 without a valid token, 403 for anyone else's
    (a customer's token, or a guest)."""
    if request.headers.get("authorization") is None:
        raise unauthorized("the console needs an agent's token (supportmesh token --agent NAME)")
    who = caller_from(request, settings.auth_secret, settings.auth_leeway_s)
    if who.agent is None:
        raise HTTPException(403, "only support agents may use the console")
    return who


def check_id(message_id: str) -> None:
    """422 unless `message_id` has the shape of a message id."""
    if not MESSAGE_ID.match(message_id):
        raise HTTPException(422, "message_id must be 1-64 characters of [A-Za-z0-9_-]")


def chat_response(result: ChatResult) -> dict[str, Any]:
    """The body of a finished chat (`ChatResponse`)."""
    return ChatResponse(
        message_id=result.message_id,
        session_id=result.session_id,
        status=result.status,
        response=result.response,
        pending_action=result.pending_action,
        action_plan=result.action_plan,
        execution_result=result.execution_result,
        trace_id=result.trace_id,
    ).model_dump()


async def claim_session(gw: Gateway, session_id: str, who: Caller) -> dict[str, Any] | None:
    """Make sure the session is the caller's: an unknown id is bound to the caller (a client may propose one);
    an id bound to someone else, or one with history but no owner, is refused (403). Returns the session's
    state (None for a session without one), read in the same round trip as its owner."""
    try:
        owner, state = await gw.sessions.owner_and_state(session_id, refresh_s=gw.settings.saga_ttl_s)
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
    return state

