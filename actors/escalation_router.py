"""escalation_router (smart router, the route's error handler): decides from the saga log.

- A saga that failed on a transient error with redelivery budget left is *resumed* from the failed step after
  a delay (`redelivered`).
- Otherwise executed side effects are *compensated* in reverse order through their recorded undo
  (`compensation_started` / `compensation_completed`), a handoff ticket is opened for a human, and the customer
  gets an honest holding reply saying what was undone and what happens next.
- Critical sentiment, low confidence, guardrail failures and requests needing approval are escalated the same
  way. JetStream dead letters reach it too (its runtime consumes the advisories).
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.base import Actor, StepContext, StepResult
from actors.commerce import CommerceClient
from observability import metrics
from saga.log import SagaEvent
from saga.protocol import AgentResponse, Message
from supportmesh.config import Settings

TRANSIENT = frozenset({"retryable_exhausted", "dead_letter", "stalled"})


def escalation_reason(message: Message, min_confidence: float = 0.6) -> str:
    """Why this message needs a human."""
    p = message.payload
    if p.error is not None:
        return f"error:{p.error.kind}"
    if p.sentiment is not None and p.sentiment.urgency == "critical":
        return "critical_sentiment"
    if p.intent is None or p.intent.confidence < min_confidence:
        return "low_confidence"
    if p.guardrail_check is not None and not p.guardrail_check.passed:
        return "guardrail_failed"
    if p.action_plan is not None and p.action_plan.action != "none" and not p.action_plan.approved:
        return "needs_approval"
    return "handoff"


def active_actions(history: list[SagaEvent]) -> list[SagaEvent]:
    """Executed side effects not yet compensated, oldest first."""
    undone = {(e.step_index, e.seq) for e in history if e.kind == "compensation_completed"}
    return [e for e in history if e.kind == "action_executed" and (e.step_index, e.seq) not in undone]


def redeliveries(history: list[SagaEvent]) -> int:
    """How often recovery already resumed this saga."""
    return sum(1 for e in history if e.kind == "redelivered" and e.data.get("source") == "escalation_router")


def holding_reply(message: Message, reason: str, ticket_id: str | None, undone: list[dict[str, Any]],
                  kept: list[dict[str, Any]]) -> str:
    """An honest reply: what happened, what was undone, what happens next."""
    name = ""
    if message.payload.context and message.payload.context.customer:
        name = str(message.payload.context.customer.get("name", "")).split(" ")[0]
    parts = [f"Hi {name}," if name else "Hello,"]
    if reason == "critical_sentiment":
        parts.append("I'm sorry about this experience. This needs a person's attention, so I've handed your "
                     "conversation to a senior colleague.")
    elif reason == "needs_approval":
        parts.append("Your request needs a colleague's approval, so I've passed it on with all the details.")
    elif reason.startswith("error:"):
        parts.append("I couldn't complete your request because one of our systems is not responding, so I've "
                     "handed it to a colleague.")
    else:
        parts.append("I want to make sure you get the right answer, so I've handed your conversation to a colleague.")
    for action in undone:
        what = {"refund": "refund", "cancel": "cancellation", "replacement": "replacement"}.get(action["action"],
                                                                                                 action["action"])
        parts.append(f"I had started a {what} on order {action['order_id']}, and I've reversed it so nothing "
                     "happens twice; my colleague will complete it with you.")
    for action in kept:
        parts.append(f"The {action['action']} on order {action['order_id']} has been done.")
    ticket = f" (ticket {ticket_id})" if ticket_id else ""
    parts.append(f"You'll hear from us by email within one business day{ticket}.")
    return " ".join(parts)


class EscalationRouter(Actor):
    """Resumes, or compensates and hands over to a human."""

    name = "escalation_router"
    kind = "router"
    handles_dead_letters = True
    sweeps_stalled_sagas = True

    async def start(self, settings: Settings) -> None:
        self.api = CommerceClient(settings)
        self.settings = settings

    async def stop(self) -> None:
        await self.api.close()

    async def handle(self, message: Message, ctx: StepContext) -> StepResult:
        p = message.payload
        settings = self.settings
        history = await ctx.saga.history(message.message_id)
        error = p.error
        if (error is not None and error.kind in TRANSIENT and error.failed_route
                and redeliveries(history) < settings.max_redeliveries):
            await asyncio.sleep(settings.redelivery_delay_s)
            n = redeliveries(history) + 1
            await ctx.record("redelivered", {"source": "escalation_router", "from_step": error.step_index,
                                             "actor": error.actor, "redelivery": n}, seq=n)
            log_entry = {"decision": "redeliver", "error": error.model_dump(mode="json"), "redelivery": n}
            return StepResult(enrichment={"error": None, "recovery_log": [*p.recovery_log, log_entry]},
                              remaining_route=list(error.failed_route), reason=f"redeliver:{error.kind}")

        reason = escalation_reason(message, settings.min_intent_confidence)
        # A side effect is undone only when the saga failed; an escalation after a successful action keeps it.
        to_undo = active_actions(history) if error is not None else []
        if to_undo:
            await ctx.saga.set_state(message.message_id, status="compensating", step_index=message.step_index,
                                     actor=self.name)
        undone = [await self._compensate(event, ctx) for event in reversed(to_undo)]
        kept = [e.data for e in active_actions(history) if error is None]
        ticket = await self.api.open_ticket(
            {"message_id": message.message_id, "session_id": message.session_id, "customer_email": p.customer_email,
             "reason": reason, "priority": "urgent" if reason == "critical_sentiment" else "normal",
             "summary": _summary(message, reason, undone)},
            key=f"{message.message_id}:ticket",
        )
        text = holding_reply(message, reason, ticket.get("ticket_id"), undone, kept)
        log_entry = {"decision": "escalate", "reason": reason, "ticket_id": ticket.get("ticket_id"),
                     "compensated": [u["action_id"] for u in undone]}
        await ctx.record("escalated", {"reason": reason, "ticket_id": ticket.get("ticket_id")})
        metrics.ESCALATIONS.labels(reason.split(":")[0]).inc()
        return StepResult(
            enrichment={"response": AgentResponse(text=text, model="escalation_router"),
                        "recovery_log": [*p.recovery_log, log_entry]},
            remaining_route=["response_aggregator"], outcome="escalated", reason=reason,
        )

    async def _compensate(self, event: SagaEvent, ctx: StepContext) -> dict[str, Any]:
        """Undo one recorded side effect (idempotent at the API; retried by the runtime if it fails)."""
        data = event.data
        await ctx.saga.record(SagaEvent(message_id=event.message_id, kind="compensation_started",
                                        actor=self.name, step_index=event.step_index, seq=event.seq,
                                        trace_id=ctx.trace_id, data={"action_id": data.get("action_id")}))
        result = await self.api.undo(data["undo"]["url"])
        metrics.COMPENSATIONS.labels(str(data.get("action", "unknown"))).inc()
        await ctx.saga.record(SagaEvent(message_id=event.message_id, kind="compensation_completed",
                                        actor=self.name, step_index=event.step_index, seq=event.seq,
                                        trace_id=ctx.trace_id,
                                        data={"action_id": data.get("action_id"), "status": result.get("status")}))
        return data


def _summary(message: Message, reason: str, undone: list[dict[str, Any]]) -> str:
    p = message.payload
    lines = [f"Reason: {reason}", f"Customer said: {p.customer_message[:500]}"]
    if p.intent:
        lines.append(f"Intent: {p.intent.name} ({p.intent.confidence:.2f})")
    if p.action_plan and p.action_plan.action != "none":
        lines.append(f"Plan: {p.action_plan.action} on {p.action_plan.order_id} approved={p.action_plan.approved}")
    if p.error:
        lines.append(f"Failure: {p.error.actor} step {p.error.step_index}: {p.error.detail[:300]}")
    for u in undone:
        lines.append(f"Compensated: {u.get('action')} {u.get('action_id')} on {u.get('order_id')}")
    return "\n".join(lines)


ACTOR = EscalationRouter
