"""The saga reads: `GET /api/sagas/{message_id}` (the log at once) and `/api/chat/{message_id}/events` (the
log, then live events and the result, as server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from actors.results import ChatResult
from gateway.ratelimit import guarded
from gateway.routes.common import caller, check_id, log
from gateway.state import Gateway
from gateway.unavailable import RETRY_AFTER_S, UNAVAILABLE
from observability import metrics
from saga.log import TERMINAL, SagaEvent

# A stream with no new event for this long closes (the client then polls `GET /api/chat/{id}`).
STREAM_IDLE_TIMEOUT_S = 120.0
# After a `saga_failed`, how often the stream looks for an answer given with no event after it.
FAILED_RESULT_POLL_S = 0.25
# `saga_failed` of a saga that never started (`saga.log` reason): there is no answer to wait for.
NOT_STARTED = "not_started"
EVENTS_ROUTE = "/api/chat/{message_id}/events"


def sagas_router(gw: Gateway) -> APIRouter:
    """The saga reads: the event stream and the saga log."""
    settings = gw.settings
    router = APIRouter()

    @router.get(EVENTS_ROUTE)
    async def chat_events(message_id: str, request: Request) -> EventSourceResponse:
        """Server-sent events of the saga: its history, then live events, then the result; then close."""
        check_id(message_id)
        who = caller(request, settings)
        gw.require_nats()
        state, result = await asyncio.gather(gw.saga.state(message_id), gw.results.get(message_id))
        if not any(r is not None and who.may_read(r.owner, r.session_id) for r in (state, result)):
            raise HTTPException(404, f"no message {message_id}")
        slot = await request.app.state.rate_limiter.open_stream(EVENTS_ROUTE, request)
        stream = guarded(_event_stream(gw, message_id, request), slot)
        return EventSourceResponse(stream, ping=10, background=BackgroundTask(slot.release) if slot else None)

    @router.get("/api/sagas/{message_id}")
    async def saga(message_id: str, request: Request) -> dict[str, Any]:
        """The saga log of one message: its state, every event in order, and the result (the owner's only)."""
        check_id(message_id)
        who = caller(request, settings)
        return await saga_document(gw, message_id, who.may_read)

    return router


async def saga_document(gw: Gateway, message_id: str,
                        may_read: Callable[[str | None, str | None], bool]) -> dict[str, Any]:
    """The saga log of one message (state, events in order, result) if `may_read(owner, session_id)` allows
    it; 404 otherwise, and for a message with no saga. The customer's read and the console's."""
    gw.require_nats()
    state, events, result = await asyncio.gather(
        gw.saga.state(message_id), gw.saga.history(message_id), gw.results.get(message_id)
    )
    if state is None and not events:
        raise HTTPException(404, f"no saga for message {message_id}")
    if not any(r is not None and may_read(r.owner, r.session_id) for r in (state, result)):
        raise HTTPException(404, f"no saga for message {message_id}")
    state_doc = state.model_dump(mode="json", exclude={"revision"}) if state else None
    if state_doc is not None and events:
        # The log is where the saga is: its last event (the state record changes on transitions only).
        state_doc.update(step_index=events[-1].step_index, actor=events[-1].actor, updated_at=events[-1].ts)
    return {
        "message_id": message_id,
        "state": state_doc,
        "events": [e.model_dump(mode="json") for e in events],
        "result": result.model_dump(mode="json") if result else None,
    }


async def _event_stream(gw: Gateway, message_id: str, request: Request, *,
                        idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S) -> AsyncIterator[dict[str, str]]:
    """The saga's history, then its live events, then its result; then the stream closes. A saga that waits for a
    person also sends the answer it gave before the wait (a `result` with a provisional status) when the wait starts.

    Every answered route ends with `saga_completed`, a failed saga's too (its answer is delivered by the
    response aggregator after `saga_failed`), so that closes the stream. After a `saga_failed` the stream
    also closes once the saga's state is final and its result stored: the answer was given directly (the
    aggregator is what failed), and no further event comes. A saga failed before it started has no answer
    (nobody waits for one): its `saga_failed` closes the stream. With no event for `idle_timeout_s` (and no
    answer), the stream closes and the client falls back to `GET /api/chat/{id}`. When NATS stops answering
    mid-stream, an `unavailable` event says so and the stream closes (the client polls, as on any break)."""
    events = gw.saga.watch(message_id, idle_timeout_s=idle_timeout_s)
    pending: asyncio.Future[SagaEvent] | None = None
    failed = False
    last_revision = 0
    idle_since = time.monotonic()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            # After a saga_failed, look for the answer now and then: it may be stored with no event after it.
            await asyncio.wait({pending}, timeout=FAILED_RESULT_POLL_S if failed else idle_timeout_s)
            if await request.is_disconnected():
                return
            if pending.done():
                try:
                    event = pending.result()
                except StopAsyncIteration:  # no event for idle_timeout_s: the watcher stopped
                    return
                pending = None
                idle_since = time.monotonic()
                last_revision = event.revision or last_revision
                yield {"event": "saga", "data": event.model_dump_json()}
                if event.kind == "saga_completed":
                    result = await _stored_result(gw, message_id)
                    if result is not None:
                        yield {"event": "result", "data": result.model_dump_json()}
                    return
                if event.kind == "wait_started" and (asked := await gw.results.get(message_id)) is not None:
                    # The answer given before the wait (a question, or "a colleague will review it"); the final
                    # one follows when the wait ends, if the stream is still open by then.
                    yield {"event": "result", "data": asked.model_dump_json()}
                if event.kind == "saga_failed" and event.data.get("reason") == NOT_STARTED:
                    return
                failed = failed or event.kind == "saga_failed"
            elif time.monotonic() - idle_since >= idle_timeout_s:
                return
            if failed and (result := await _answer_given_directly(gw, message_id)) is not None:
                # Whatever the log holds past what was sent (the watcher may not have handed it over yet).
                for late in await gw.saga.history(message_id):
                    if (late.revision or 0) > last_revision:
                        yield {"event": "saga", "data": late.model_dump_json()}
                yield {"event": "result", "data": result.model_dump_json()}
                return
    except UNAVAILABLE as exc:
        metrics.GATEWAY_UNAVAILABLE.labels(EVENTS_ROUTE).inc()
        log.warning("event stream of %s closed: %s", message_id, type(exc).__name__)
        yield {"event": "unavailable", "data": orjson.dumps({"retry_after_s": RETRY_AFTER_S}).decode()}
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, *UNAVAILABLE):
                await pending
        with contextlib.suppress(*UNAVAILABLE):
            await events.aclose()


async def _stored_result(gw: Gateway, message_id: str, wait_s: float = 5.0) -> ChatResult | None:
    """The result of a completed saga: stored before `saga_completed`, read again briefly in case the KV read
    lags behind the watcher."""
    deadline = time.monotonic() + wait_s
    while True:
        result = await gw.results.get(message_id, provisional=False)
        if result is not None or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(0.1)


async def _answer_given_directly(gw: Gateway, message_id: str) -> ChatResult | None:
    """The answer of a failed saga once nothing more will happen to it: its state is final and its result
    stored. While the response aggregator delivers the answer, the state is not final yet (it becomes final
    after `saga_completed`), so the aggregator's events are not cut off."""
    state = await gw.saga.state(message_id)
    if state is None or state.status not in TERMINAL:
        return None
    return await gw.results.get(message_id, provisional=False)
