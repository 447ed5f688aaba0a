"""response_aggregator: the last step. Writes the history rows and the session state, stores the outcome in
KV and answers the waiting gateway. Every write is idempotent: the step may run twice after a crash.

It also delivers the answer of a saga that failed elsewhere (the runtime routes it here with the reply set
and the outcome `failed`), so that answer is in the history like any other.

An escalated answer with a handoff ticket opens the session's hand-over (actors/handover.py): the customer's
next messages go to the support team's queue instead of the bot. It is opened here, not by the gateway that
relays the answer, because this step runs for every answered saga, also when no gateway waits for it any more
(the customer left, or the saga outlived the chat deadline and the sweeper finished it), and it runs until
it is recorded (a retried step opens it once: the script keys it by message).

Being the one process that writes the history, it also enforces its retention: every
`history_prune_interval_s` it deletes rows older than `history_retention_days`, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from actors.base import Actor, StepContext
from actors.domain import Message
from actors.handover import escalation_of
from actors.history import HistoryStore
from actors.results import build_result, provisional
from actors.sessions import SessionStore
from config.settings import Settings

log = logging.getLogger("supportmesh.actor.response_aggregator")


def moved_on(message: Message) -> bool:
    """The customer answered a pending question with another question: that one's saga owns the session now."""
    return message.payload.decision is not None and message.payload.decision.outcome == "other"


class ResponseAggregator(Actor):
    """Answers the customer."""

    name = "response_aggregator"

    async def start(self, settings: Settings) -> None:
        self.history = await HistoryStore(settings.sqlite_path).open()
        self.sessions = SessionStore(settings.redis_dsn, ttl_s=settings.session_ttl_s)
        self._prune_task = asyncio.create_task(self._prune_loop(settings), name="history-prune")

    async def _prune_loop(self, settings: Settings) -> None:
        while True:
            try:
                deleted = await self.history.prune(settings.history_retention_days,
                                                   batch=settings.history_prune_batch)
                if deleted:
                    log.info("deleted %d history rows older than %s days", deleted, settings.history_retention_days)
            except Exception as exc:  # a locked or full disk: try again next time
                log.warning("history retention failed: %s", exc)
            await asyncio.sleep(settings.history_prune_interval_s)

    async def stop(self) -> None:
        self._prune_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._prune_task
        await self.history.close()
        await self.sessions.close()

    async def _set_session_state(self, session_id: str, message_id: str, status: str) -> None:
        with contextlib.suppress(Exception):  # session state is a cache; history and KV are the record
            await self.sessions.set_state(session_id, last_message_id=message_id, status=status)

    async def _open_handover(self, message: Message, ctx: StepContext) -> None:
        """Hand the session to a person when the saga opened a handoff ticket (escalated, or failed for good)."""
        ticket_id, reason = escalation_of(await ctx.history())
        if ticket_id is None:
            return
        try:
            opened = await self.sessions.handovers.open(
                session_id=message.session_id, message_id=message.message_id, owner=message.owner,
                customer_email=message.payload.customer_email, ticket_id=ticket_id, reason=reason,
                customer_message=message.payload.customer_message)
        except Exception as exc:  # Redis down: the ticket still reaches a person; the chat stays with the bot
            ctx.log.error("could not open the hand-over of session %s: %s", message.session_id, exc)
            return
        if opened:
            ctx.log.info("session handed over to a person (ticket %s, %s)", ticket_id, reason)

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        result = build_result(message, ctx.trace_id)
        # The three records are independent: written at once, and all stored before the customer is answered.
        await asyncio.gather(
            self._record_history(message, result.response, ctx),
            self._set_session_state(message.session_id, message.message_id, result.status)
            if not moved_on(message) else asyncio.sleep(0),
            ctx.save_result(result, provisional=provisional(message)),
        )
        if result.status == "escalated":
            # Before the answer: the customer's next message, however quick, already finds the hand-over.
            await self._open_handover(message, ctx)
        if message.metadata.reply_subject:
            await ctx.publish_reply(message.metadata.reply_subject, result.to_bytes())
        return {}

    async def _record_history(self, message: Message, agent_text: str, ctx: StepContext) -> None:
        """The rows of this answer: the customer's message (`<id>`) and the answer (`<id>:agent`). An answer given
        before a wait for a person is `<id>:asked`, and the final one after it is `<id>:agent`, with the customer's
        reply that decided between them (its own message id); nothing when the customer moved on to another
        question (that message is answered, and recorded, by a saga of its own)."""
        if moved_on(message):
            return
        taken = message.route.steps[: message.route.current_step + 1]
        asked = provisional(message)
        reply = None if asked else await customer_reply(message, ctx)
        if reply is not None:
            await self.history.record_message(message_id=reply[0], session_id=message.session_id, sender="customer",
                                              content=reply[1], route_trace=taken)
        await self.history.record_exchange(
            message_id=message.message_id, session_id=message.session_id,
            customer_text=message.payload.customer_message, agent_text=agent_text, route_trace=taken,
            payload=message.payload.model_dump(mode="json"),
            customer_at=datetime.fromtimestamp(message.metadata.created_at, UTC).isoformat(timespec="microseconds"),
            agent_row=f"{message.message_id}:asked" if asked else None)


async def customer_reply(message: Message, ctx: StepContext) -> tuple[str, str] | None:
    """The customer's answer to this saga's question (its message id and text): from the decision the
    coordinator recorded, else from the saga log's signal (a coordinator that failed after the yes)."""
    decision = message.payload.decision
    if decision is not None:
        return (decision.reply_message_id, decision.reply_text) if decision.reply_message_id and \
            decision.reply_text else None
    plan = message.payload.action_plan
    if plan is None or plan.requires != "confirmation":
        return None
    for event in reversed(await ctx.history()):
        payload = event.data.get("payload") or {}
        if event.kind == "signal_received" and event.data.get("signal") == "confirmation" \
                and isinstance(payload.get("message_id"), str) and isinstance(payload.get("text"), str):
            return payload["message_id"][:64], payload["text"][:4000]
    return None

ACTOR = ResponseAggregator
