"""Live events of a session, across gateways: what an agent does in the console reaches the customer's widget.

The gateway that handles a console action publishes it on the core NATS subject `supportmesh.session.<id>`;
every gateway serving that session's event stream (`GET /api/sessions/{id}/events`) is subscribed to it and
passes it on as a server-sent event. Events: `agent_reply` ({text, agent, message_id, at}) and
`handover_closed` ({agent, at}). Nothing is stored here: history and the session are the record, and a widget
that reconnects reads the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request

SESSION_SUBJECT_PREFIX = "supportmesh.session"
# Events a session stream passes on (anything else on the subject is dropped).
SESSION_EVENTS = frozenset({"agent_reply", "handover_closed"})
# How often a stream with nothing to send checks whether its client went away.
DISCONNECT_POLL_S = 5.0
# At most this many events wait for a slow client; older ones are dropped (the history has them).
QUEUE_SIZE = 100


def session_subject(session_id: str) -> str:
    """The core NATS subject of a session's live events."""
    return f"{SESSION_SUBJECT_PREFIX}.{session_id}"


async def publish_session_event(nc: Any, session_id: str, event: str, data: dict[str, Any]) -> None:
    """Tell every gateway streaming this session (and so the customer's open widget)."""
    payload = orjson.dumps({"event": event, "data": {**data, "at": time.time()}})
    await nc.publish(session_subject(session_id), payload)
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)


async def session_events(nc: Any, session_id: str, request: Request) -> AsyncIterator[dict[str, str]]:
    """The session's live events as server-sent events, from the moment of subscribing until the client goes
    away (an `open` event first, so the client knows it is listening)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_SIZE)

    async def on_message(msg: Any) -> None:
        if queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
        queue.put_nowait(msg.data)

    sub = await nc.subscribe(session_subject(session_id), cb=on_message)
    try:
        yield {"event": "open", "data": orjson.dumps({"session_id": session_id}).decode()}
        while True:
            try:
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    raw = await queue.get()
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("event") in SESSION_EVENTS:
                yield {"event": message["event"], "data": orjson.dumps(message.get("data") or {}).decode()}
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
