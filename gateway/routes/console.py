"""The console's API, for support agents only (a token with `"role": "agent"`: 401 without a valid token, 403
for anyone else's): the queue of open hand-overs and of sagas waiting for approval, each one's conversation
and saga timeline, and the agent's reply, close, approve and deny.

An agent reads any session that is in the queue, and the saga of its escalated message, through these routes
only (the customers' routes refuse agent tokens).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from gateway import approvals, handover
from gateway.auth import Caller
from gateway.routes.common import agent_caller, check_id
from gateway.routes.sagas import saga_document
from gateway.routes.sessions import check_session_id, history_rows
from gateway.schemas import AgentReply, Decision, Queue
from gateway.state import Gateway

NO_DECISION_WAITING = "no saga waiting for a decision"


def console_router(gw: Gateway) -> APIRouter:
    """The console's routes (all agent-only)."""
    settings = gw.settings
    router = APIRouter(prefix="/api/console", tags=["console"])

    def agent(request: Request) -> Caller:
        """The agent calling (a dependency: checked before the body is)."""
        return agent_caller(request, settings)

    @router.get("/queue", response_model=Queue)
    async def queue(who: Caller = Depends(agent)) -> Queue:
        """The open hand-overs and the sagas waiting for approval, oldest first."""
        return Queue(items=sorted([*await handover.queue(gw), *await approvals.waiting_for_approval(gw)],
                                  key=lambda item: item.opened_at))

    @router.get("/sessions/{session_id}")
    async def session(session_id: str, limit: int = 200, who: Caller = Depends(agent)) -> dict[str, Any]:
        """A queued session: its hand-over and its conversation (oldest first). 404 for a session that is not
        in the queue: an agent reads the conversations handed to people, not every customer's."""
        check_session_id(session_id)
        record = await gw.sessions.handovers.get(session_id)
        waiting = [] if record is not None else [
            item for item in await approvals.waiting_for_approval(gw) if item.session_id == session_id]
        if record is None and not waiting:
            raise HTTPException(404, f"session {session_id} is not in the queue")
        item = handover.queue_item(record) if record is not None else waiting[0]
        rows = await history_rows(gw, session_id, limit)
        return {"session_id": session_id, "handover": item.model_dump(), "messages": rows}

    @router.get("/sagas/{message_id}")
    async def saga(message_id: str, who: Caller = Depends(agent)) -> dict[str, Any]:
        """The saga log of a message of a queued session (the timeline of the escalated message)."""
        check_id(message_id)
        queued = set(await gw.sessions.handovers.open_sessions())
        queued.update(item.session_id for item in await approvals.waiting_for_approval(gw))
        return await saga_document(gw, message_id, lambda _owner, session_id: session_id in queued)

    @router.post("/sessions/{session_id}/reply")
    async def reply(session_id: str, body: AgentReply, who: Caller = Depends(agent)) -> dict[str, Any]:
        """Answer the customer: stored in the history and shown live in their widget. 409 when the session has
        no open hand-over."""
        check_session_id(session_id)
        sent = await handover.reply(gw, session_id, str(who.agent), body.text)
        if sent is None:
            raise HTTPException(409, f"session {session_id} has no open hand-over")
        return sent

    @router.post("/sessions/{session_id}/close")
    async def close(session_id: str, who: Caller = Depends(agent)) -> dict[str, Any]:
        """Close the hand-over: the session goes back to the bot, and the widget is told. 409 when none is open."""
        check_session_id(session_id)
        closed = await handover.close(gw, session_id, str(who.agent))
        if closed is None:
            raise HTTPException(409, f"session {session_id} has no open hand-over")
        return closed

    @router.post("/sagas/{message_id}/approve", responses={409: {"description": NO_DECISION_WAITING}})
    async def approve(message_id: str, who: Caller = Depends(agent)) -> dict[str, Any]:
        """Approve the action a waiting saga proposes: it is carried out once and the customer is told. 409 when
        the saga waits for no decision (finished, timed out, unknown, or decided already)."""
        check_id(message_id)
        return await _decide(message_id, approved=True, agent=who.agent or "", note="")

    @router.post("/sagas/{message_id}/deny", responses={409: {"description": NO_DECISION_WAITING}})
    async def deny(message_id: str, body: Decision, who: Caller = Depends(agent)) -> dict[str, Any]:
        """Deny the action a waiting saga proposes, with a note for the customer. 409 when no saga waits."""
        check_id(message_id)
        return await _decide(message_id, approved=False, agent=who.agent or "", note=body.note)

    async def _decide(message_id: str, *, approved: bool, agent: str, note: str) -> dict[str, Any]:
        outcome = await approvals.decide(gw, message_id, approved=approved, agent=agent, note=note)
        if outcome != "accepted":
            raise HTTPException(409, NO_DECISION_WAITING)  # not waiting, or decided already (`outcome`)
        return {"message_id": message_id, "decision": "approved" if approved else "denied", "agent": agent}

    return router
