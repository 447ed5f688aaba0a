"""`POST /api/chat` and `GET /api/chat/{message_id}`: start a saga for a customer message and answer it.

`POST /api/chat` turns a customer message into a saga (published through JetStream with a publish ack),
waits for the reply up to the deadline, and otherwise answers 202 so the client follows up with
`GET /api/chat/{message_id}` or the server-sent events of `/api/chat/{message_id}/events` (gateway/routes/sagas.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind

from actors.domain import GUEST_EMAIL, new_message, subject_for
from actors.domain import Message as SagaMessage
from actors.results import ChatResult
from gateway import handover
from gateway.confirmations import answer_confirmation, pending_confirmation
from gateway.idempotency import IDEMPOTENCY_HEADER, earlier_attempt, message_id_for
from gateway.replies import REPLIES
from gateway.routes.common import caller, chat_response, check_id, claim_session, log
from gateway.schemas import ChatPending, ChatRequest, ChatResponse
from gateway.state import Gateway
from gateway.unavailable import RETRY_AFTER_S, UNAVAILABLE
from observability import metrics
from observability.tracing import (
    current_trace_id,
    inject_headers,
    messaging_attributes,
    messaging_span_name,
    tracer,
)
from saga.transport import msg_id, publish, record_start


def chat_router(gw: Gateway, chat_route: tuple[str, ...]) -> APIRouter:
    """The chat routes; every saga starts on `chat_route` (the registry's chat route)."""
    settings = gw.settings
    router = APIRouter()

    @router.post(
        "/api/chat",
        response_model=ChatResponse,
        responses={202: {"model": ChatPending}, 413: {"description": "body too large"},
                   503: {"description": "not accepted (nothing was started): safe to send again after Retry-After"}},
    )
    async def chat(
        body: ChatRequest,
        request: Request,
        prefer: str | None = Header(default=None, description="`respond-async`: answer 202 with the message id "
                                    "at once and follow the saga's events (what the widget does)"),
        idempotency_key: str | None = Header(default=None, alias=IDEMPOTENCY_HEADER,
                                             description="the same key (per customer and session) and message "
                                             "answer with the same saga, never a second one"),
    ) -> Any:
        """Send a customer message; the answer within the deadline, or 202 and the message id.

        With `Authorization: Bearer <token>` the customer is the token's `sub` (a body `customer_email` naming
        someone else is refused with 403); without one the chat is a guest chat (general answers, and the status
        of one order given by its number and the `customer_email` it was placed with; never an action)."""
        who = caller(request, settings)
        if who.verified and body.customer_email and body.customer_email != who.email:
            raise HTTPException(403, "customer_email does not match the signed-in customer")
        session = await claim_session(gw, body.session_id, who)  # and the session's state, in one round trip
        # A person has this conversation: the message goes to the support team's queue, no saga starts.
        if (to_agent := await _with_agent(gw, body.session_id, body.message, session)) is not None:
            return to_agent
        # A retry (the same Idempotency-Key) is the same message again, never the answer to its own question.
        retry = idempotency_key is not None and await gw.saga.state(
            message_id_for(who.owner, body.session_id, idempotency_key)) is not None
        if who.verified and not retry and (waiting := await pending_confirmation(gw, body.session_id, who, session)):
            # The reply to "shall I go ahead?": the waiting saga's signal, answered with its final answer.
            what, result = await answer_confirmation(gw, waiting, body.message, settings.chat_deadline_s)
            if what == "answered":
                if result is None:
                    return JSONResponse(ChatPending(message_id=waiting).model_dump(), status_code=202)
                return chat_response(result)
        started = time.perf_counter()
        metrics.CHATS_IN_FLIGHT.inc()
        message = new_message(
            session_id=body.session_id,
            customer_email=who.email or body.customer_email or GUEST_EMAIL,
            customer_message=body.message,
            steps=chat_route,
            reply_subject=gw.replies.subject,
            deadline_s=settings.chat_deadline_s,
            customer_verified=who.verified,
            message_id=message_id_for(who.owner, body.session_id, idempotency_key) if idempotency_key else None,
        )
        trace_id = current_trace_id()
        message = message.model_copy(update={"metadata": message.metadata.model_copy(update={"trace_id": trace_id})})
        waiter = gw.replies.expect(message.message_id)
        try:
            # A retry with the same Idempotency-Key follows the first attempt's saga: nothing is started again.
            again = idempotency_key is not None and await earlier_attempt(gw.saga, message.message_id, body.message)
            if not again:
                try:
                    # The session is marked active before publishing, so the aggregator's final status is never
                    # overwritten by "active"; it is written alongside the saga's start (independent writes).
                    _, started_here = await asyncio.gather(
                        _touch_session(gw, body.session_id, message.message_id, "active"),
                        record_start(gw.saga, message),
                    )
                except Exception as exc:
                    log.exception("could not record the start of the saga")
                    raise HTTPException(503, f"the mesh is not accepting messages right now: {type(exc).__name__}",
                                        headers={"Retry-After": str(RETRY_AFTER_S)})
                again = not started_here  # a concurrent attempt with the same key recorded it first
            # From here on the saga exists: if the publish fails, the sweeper starts it from the log. Answering
            # 503 now would make the client send it again and start a second saga, so it gets its id (202).
            # Only the attempt that recorded the start publishes; a repeated one waits for the same answer.
            published = True if again else await _publish_first_step(gw, message)
            if again and (stored := await gw.results.get(message.message_id)) is not None:
                return chat_response(stored)
            pending = JSONResponse(ChatPending(message_id=message.message_id, trace_id=trace_id).model_dump(),
                                   status_code=202)
            if published and _respond_async(prefer):
                pending.headers["Preference-Applied"] = "respond-async"
                return pending
            result = await _wait_for_result(gw, message.message_id, waiter, settings.chat_deadline_s) \
                if published else None
            if result is None:
                metrics.observe(metrics.CHAT_LATENCY_SECONDS.labels("processing"), time.perf_counter() - started)
                return pending
            metrics.observe(metrics.CHAT_LATENCY_SECONDS.labels(result.status), time.perf_counter() - started)
            return chat_response(result)
        finally:
            # Always, whether answered, timed out, failed or cancelled by a client that went away.
            gw.replies.forget(message.message_id, waiter)
            metrics.CHATS_IN_FLIGHT.dec()

    @router.get("/api/chat/{message_id}", response_model=ChatResponse, responses={202: {"model": ChatPending}})
    async def chat_outcome(message_id: str, request: Request) -> Any:
        """The outcome of a message: 200 when finished, 202 while its saga runs, 404 if unknown (or not the
        caller's: a customer's token, or for a guest the session id in `X-Session-Id`)."""
        check_id(message_id)
        who = caller(request, settings)
        gw.require_nats()
        result = await gw.results.get(message_id)
        if result is not None:
            if not who.may_read(result.owner, result.session_id):
                raise HTTPException(404, f"no message {message_id}")
            return chat_response(result)
        state = await gw.saga.state(message_id)
        if state is None or not who.may_read(state.owner, state.session_id):
            raise HTTPException(404, f"no message {message_id}")
        return JSONResponse(ChatPending(message_id=message_id, trace_id=state.trace_id).model_dump(), status_code=202)

    return router


async def _publish_first_step(gw: Gateway, message: SagaMessage, attempts: int = 3) -> bool:
    """Publish the saga's first step, retrying briefly (the same Nats-Msg-Id, so never twice); False when
    JetStream would not take it (the sweeper will)."""
    subject = subject_for(message.route.current)
    for attempt in range(1, attempts + 1):
        try:
            with tracer().start_as_current_span(
                messaging_span_name("publish", subject), kind=SpanKind.PRODUCER,
                attributes=messaging_attributes("publish", subject, message.message_id, msg_id(message)),
            ):
                await publish(gw.js, message, inject_headers())
            return True
        except Exception:
            log.warning("publishing the first step failed (attempt %d of %d)", attempt, attempts,
                        exc_info=True, extra={"message_id": message.message_id})
            if attempt < attempts:
                await asyncio.sleep(0.25 * attempt)
    return False


def _respond_async(prefer: str | None) -> bool:
    """RFC 7240 `Prefer: respond-async`."""
    return bool(prefer) and "respond-async" in [p.strip().lower() for p in prefer.split(",")]


async def _wait_for_result(gw: Gateway, message_id: str, waiter: asyncio.Future[ChatResult],
                           deadline_s: float) -> ChatResult | None:
    """The reply on this instance's subject within the deadline; past it, the KV copy if there is one.
    The caller forgets the waiter (in every case, cancellation included)."""
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands as the
        # reply arrives, and the request of a client that went away would run on to its deadline.
        async with asyncio.timeout(deadline_s):
            result = await waiter
    except TimeoutError:
        # The reply may have been published while this gateway was reconnecting (or to another instance).
        try:
            result = await gw.results.get(message_id)
        except UNAVAILABLE:
            return None  # the saga exists: 202, the client follows it (a 503 would make it send a second one)
        if result is not None:
            REPLIES.labels("kv").inc()
        return result
    REPLIES.labels("subject").inc()
    return result


async def _with_agent(gw: Gateway, session_id: str, text: str,
                      session: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `with_agent` answer when a person has the session (`session`: its state); None when the bot answers
    (also when the message cannot be put in the hand-over: the customer is answered rather than refused)."""
    try:
        return await handover.with_agent(gw, session_id, text, session)
    except Exception:
        log.warning("could not hand the message to the session's hand-over; the bot answers", exc_info=True)
        return None


async def _touch_session(gw: Gateway, session_id: str, message_id: str, status: str) -> None:
    try:
        await gw.sessions.set_state(session_id, last_message_id=message_id, status=status)
    except Exception:
        # Session state helps follow-ups; losing it must not lose the customer's message.
        log.warning("could not update session state", exc_info=True)

