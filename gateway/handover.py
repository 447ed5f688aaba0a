"""Hand-overs at the gateway: a session a person has taken over (opened by the response aggregator, see
actors/handover.py) gets its customer's messages into the support team's queue instead of a saga, and the
agent's replies and the close from the console.

The session's status (`session:{id}:state`) is what the chat route reads: `handover` while a person has it.
"""

from __future__ import annotations

import time
from typing import Any

from actors.handover import HANDOVER_STATUS
from gateway.live import publish_session_event
from gateway.schemas import ChatResponse, QueueItem
from gateway.state import Gateway
from observability import metrics
from saga.protocol import new_message_id

WITH_AGENT_TEXT = ("A colleague has your conversation now: your message has been passed on, and their answer "
                   "will appear here.")
CUSTOMER_ROUTE = ["console"]


def agent_route(agent: str) -> list[str]:
    """The `route_trace` of an agent's reply in the history: who wrote it."""
    return [f"console:{agent}"]


async def refresh_open_count(gw: Gateway) -> int:
    """Count the open hand-overs into the gauge (every gateway reports the same shared count)."""
    count = await gw.sessions.handovers.count()
    metrics.HANDOVERS_OPEN.set(count)
    return count


async def with_agent(gw: Gateway, session_id: str, text: str, session: dict[str, Any] | None) -> dict[str, Any] | None:
    """When a person has the session (`session`: its state, as just read): the customer's message goes to the
    queue and the history (no saga), and the answer says a colleague has the conversation (`ChatResponse`,
    status `with_agent`). None when the session is with the bot (then a saga answers)."""
    if not session or session.get("status") != HANDOVER_STATUS:
        return None
    # Noted only while the hand-over is open: if it was closed a moment ago, the bot answers.
    if not await gw.sessions.handovers.note_customer_message(session_id, text):
        return None
    message_id = new_message_id()
    await gw.history.record_message(message_id=message_id, session_id=session_id, sender="customer",
                                    content=text, route_trace=CUSTOMER_ROUTE)
    metrics.HANDOVER_MESSAGES.labels("customer").inc()
    await refresh_open_count(gw)
    return ChatResponse(message_id=message_id, session_id=session_id, status="with_agent",
                        response=WITH_AGENT_TEXT).model_dump()


async def reply(gw: Gateway, session_id: str, agent: str, text: str) -> dict[str, Any] | None:
    """An agent's reply: into the history (sender "agent"), and live to the customer's widget; None when the
    session has no open hand-over."""
    if not await gw.sessions.handovers.note_agent_reply(session_id, agent):
        return None
    message_id = f"{new_message_id()}:agent"
    await gw.history.record_message(message_id=message_id, session_id=session_id, sender="agent", content=text,
                                    route_trace=agent_route(agent))
    metrics.HANDOVER_MESSAGES.labels("agent").inc()
    await publish_session_event(gw.nc, session_id, "agent_reply",
                                {"message_id": message_id, "agent": agent, "text": text})
    return {"session_id": session_id, "message_id": message_id, "agent": agent}


async def close(gw: Gateway, session_id: str, agent: str) -> dict[str, Any] | None:
    """Close the hand-over: the session goes back to the bot and the widget is told; the closed record, or
    None when none was open."""
    record = await gw.sessions.handovers.close(session_id)
    if record is None:
        return None
    await gw.sessions.set_state(session_id, last_message_id=str(record.get("message_id", "")), status="resolved")
    metrics.observe(metrics.HANDOVER_DURATION_SECONDS, max(0.0, time.time() - float(record["opened_at"])))
    await refresh_open_count(gw)
    await publish_session_event(gw.nc, session_id, "handover_closed", {"agent": agent})
    return {"session_id": session_id, "closed_by": agent, "record": record}


def queue_item(record: dict[str, Any]) -> QueueItem:
    """A hand-over as an item of the queue."""
    return QueueItem(
        kind="handover", session_id=record["session_id"], message_id=record.get("message_id", ""),
        customer_email=record.get("customer_email", ""), verified=record.get("owner", "guest") != "guest",
        ticket_id=record.get("ticket_id") or None, reason=record.get("reason", ""),
        opened_at=record.get("opened_at", 0.0), customer_messages=record.get("customer_messages", 0),
        agent_replies=record.get("agent_replies", 0), last_customer_message=record.get("last_customer_message", ""),
        last_customer_at=record.get("last_customer_at"), last_agent=record.get("last_agent"))


async def queue(gw: Gateway) -> list[QueueItem]:
    """The open hand-overs, oldest first (a hand-over closed while this reads is left out)."""
    items = []
    for session_id in await gw.sessions.handovers.open_sessions():
        record = await gw.sessions.handovers.get(session_id)
        if record is not None:
            items.append(queue_item(record))
    metrics.HANDOVERS_OPEN.set(len(items))
    return items
