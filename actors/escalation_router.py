"""escalation_router (smart router, the route's error handler): decides from the saga log.

- A saga that failed on a transient error with redelivery budget left is *resumed* from the failed step after
  a delay (`redelivered`).
- Otherwise the side effects the saga performed are *compensated* in reverse order (`compensation_started` /
  `compensation_completed`): the ones recorded in the saga log (`action_executed`) and the ones the orders API
  performed under this saga's idempotency keys whose answer was lost. An undo is retried with backoff until it
  succeeds or the compensation deadline passes (`SUPPORTMESH_COMPENSATION_DEADLINE_S`); then a human takes the
  reversal over (`compensation_failed`).
- A handoff ticket is opened for a human, and the customer gets an honest holding reply saying what was undone,
  what is still pending with a colleague and what happens next. What was undone comes from the whole saga
  history, so a retried step still names a refund an earlier attempt reversed.
- Critical sentiment, low confidence, guardrail failures and requests needing approval are escalated the same
  way. JetStream dead letters reach it too (its runtime consumes the advisories).
- A failure of the response aggregator, or any failure after the saga was already escalated, is never routed
  back into the same failure: the router answers the customer itself and ends the saga.
- A saga its runtime fails for good (the router itself failing for good, dead letters, the sweeper giving up)
  gets the same handoff ticket (`on_saga_failed`, same idempotency key), so its answer's "a colleague will
  follow up" is true; when the ticket cannot be opened the answer says so instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from actors.base import Actor, FailureContext, StepContext, StepResult
from actors.commerce import CommerceClient
from actors.domain import ANSWERING_ACTOR, AgentResponse, Message
from actors.escalation import (
    TICKET_SUMMARY_MAX,
    Compensation,
    Effect,
    GaveUp,
    already_escalated,
    compensation_began,
    effects_at_api,
    escalation_reason,
    event_seq,
    failed_saga_compensation,
    holding_reply,
    must_not_route_back,
    recorded_effects,
    redeliveries,
    should_redeliver,
    ticket_priority,
    ticket_summary,
    undone_effects,
)
from actors.results import build_result, execution_with_undone, saga_effects
from config.settings import Settings
from observability import metrics
from saga.log import SagaEvent
from saga.protocol import ErrorInfo
from saga.retry import is_retryable

T = TypeVar("T")


class EscalationRouter(Actor):
    """Resumes, or compensates and hands over to a human."""

    name = "escalation_router"
    kind = "router"

    async def start(self, settings: Settings) -> None:
        self.api = CommerceClient(settings)
        self.settings = settings

    async def stop(self) -> None:
        await self.api.close()

    async def handle(self, message: Message, ctx: StepContext) -> StepResult:
        history = await ctx.history()
        error = message.payload.error
        if error is not None and should_redeliver(error, history, self.settings.max_redeliveries):
            return await self._redeliver(message, error, history, ctx)
        final = must_not_route_back(error, history)
        # A saga that already answered the customer keeps its effects: the answer told them so.
        answered = final and await ctx.stored_result() is not None
        if error is not None and not answered:
            comp = await self._compensate(message, history, ctx)
        else:
            comp = self._keep(history)
        return await self._escalate(message, history, comp, ctx, final=final, answered=answered)

    async def _redeliver(self, message: Message, error: ErrorInfo, history: list[SagaEvent],
                         ctx: StepContext) -> StepResult:
        """Resume the failed route after a delay."""
        await asyncio.sleep(self.settings.redelivery_delay_s)
        n = redeliveries(history) + 1
        await ctx.record("redelivered", {"source": "escalation_router", "from_step": error.step_index,
                                         "actor": error.actor, "redelivery": n}, seq=n)
        log_entry = {"decision": "redeliver", "error": error.model_dump(mode="json"), "redelivery": n}
        return StepResult(enrichment={"error": None, "recovery_log": [*message.payload.recovery_log, log_entry]},
                          remaining_route=list(error.failed_route), reason=f"redeliver:{error.kind}")

    @staticmethod
    def _keep(history: list[SagaEvent]) -> Compensation:
        """No compensation: effects not undone so far are kept (and named in the reply)."""
        undone = undone_effects(history)
        gone = {e.action_id for e in undone}
        return Compensation(undone=undone, kept=[e for e in recorded_effects(history) if e.action_id not in gone])

    async def _escalate(self, message: Message, history: list[SagaEvent], comp: Compensation, ctx: StepContext,
                        *, final: bool, answered: bool) -> StepResult:
        """Open the ticket, write the holding reply, and route to the answer (or answer here when the answering
        step is what failed)."""
        p = message.payload
        reason = escalation_reason(message, self.settings.min_intent_confidence)
        ticket_id = await self._open_ticket(message, reason, comp)
        response = AgentResponse(text=holding_reply(message, reason, ticket_id, comp), model="escalation_router")
        decision = "finish" if final else "escalate"
        log_entry = {"decision": decision, "reason": reason, "ticket_id": ticket_id,
                     "compensated": [e.action_id for e in comp.undone],
                     "pending_reversal": [e.action_id for e in comp.pending], "unverified": comp.unverified}
        if not already_escalated(history):
            metrics.ESCALATIONS.labels(reason.split(":")[0]).inc()
        await ctx.record("escalated", {"reason": reason, "ticket_id": ticket_id, "decision": decision,
                                       "pending_reversal": log_entry["pending_reversal"],
                                       "unverified": comp.unverified})
        enrichment: dict[str, Any] = {"response": response, "recovery_log": [*p.recovery_log, log_entry]}
        marked = execution_with_undone(message, {e.action_id for e in comp.undone})
        if marked is not None:
            enrichment["execution_result"] = marked
        if final and not answered:
            await self._answer(message.enriched(enrichment), ctx)
        return StepResult(enrichment=enrichment, remaining_route=[] if final else [ANSWERING_ACTOR],
                          outcome="escalated", reason=reason)

    async def _open_ticket(self, message: Message, reason: str, comp: Compensation,
                           failure: str | None = None) -> str | None:
        """Hand the conversation to a human, once per message (a retried step, or a failure of the saga after
        its escalation, gets the same ticket)."""
        summary = ticket_summary(message, reason, comp, failure)[:TICKET_SUMMARY_MAX]
        ticket = await self.api.open_ticket(
            {"message_id": message.message_id, "session_id": message.session_id,
             "customer_email": message.payload.customer_email, "reason": reason,
             "priority": ticket_priority(reason, comp), "summary": summary},
            key=f"{message.message_id}:ticket",
        )
        return ticket.get("ticket_id")

    async def on_saga_failed(self, message: Message, history: list[SagaEvent], ctx: FailureContext) -> str | None:
        """The runtime fails a saga for good in this process: open its handoff ticket (idempotently, under the
        escalation's key), listing its effects as the saga history has them, so that the customer's answer can
        truthfully say a colleague follows up."""
        comp = failed_saga_compensation(saga_effects(message, history), self.api.undo_url)
        return await self._open_ticket(message, "saga_failed", comp, failure=f"{ctx.actor}: {ctx.detail}")

    @staticmethod
    async def _answer(message: Message, ctx: StepContext) -> None:
        """Answer the customer here (the answering step is what failed): store the result, then reply."""
        final = message.model_copy(update={"metadata": message.metadata.model_copy(update={"outcome": "escalated"})})
        result = build_result(final, ctx.trace_id)
        if await ctx.save_result(result) and message.metadata.reply_subject:
            await ctx.publish_reply(message.metadata.reply_subject, result.to_bytes())

    # ---- compensation -----------------------------------------------------------------------------------

    async def _compensate(self, message: Message, history: list[SagaEvent], ctx: StepContext) -> Compensation:
        """Undo every effect of the saga not undone yet, newest first; what cannot be undone before the
        deadline is left to a human."""
        began = compensation_began(history)
        deadline = (began or time.time()) + self.settings.compensation_deadline_s
        comp = Compensation(undone=undone_effects(history))
        effects = await self._effects(message, history, deadline, ctx, comp)
        gone = {e.action_id for e in comp.undone}
        to_undo = [e for e in effects if e.action_id not in gone]
        # Recording `compensation_started` marks the saga `compensating` (the runtime's transition).
        for effect in reversed(to_undo):
            if await self._undo(effect, deadline, ctx):
                comp.undone.append(effect)
            else:
                comp.pending.append(effect)
        return comp

    async def _effects(self, message: Message, history: list[SagaEvent], deadline: float, ctx: StepContext,
                       comp: Compensation) -> list[Effect]:
        """The saga's effects, oldest first: recorded ones, then those the orders API performed under this
        saga's keys without an answer reaching us (an order that cannot be checked is noted as unverified)."""
        effects = {e.action_id: e for e in recorded_effects(history)}
        plan = message.payload.action_plan
        # Any plan with an order may have acted: one the policy approved, and one a colleague approved (its plan
        # says `approved: false`, `requires: approval`). Looking costs one listing; missing an effect keeps it.
        if plan is None or plan.action == "none" or not plan.order_id:
            return list(effects.values())
        if any((e.action, e.order_id) == (plan.action, plan.order_id) for e in effects.values()):
            return list(effects.values())  # the planned effect's answer arrived: nothing unknown to look for
        order_id = plan.order_id
        try:
            actions = await self._persist(lambda: self.api.order_actions(order_id), deadline, ctx,
                                          f"listing the actions of order {order_id}")
        except GaveUp as exc:
            ctx.log.error("could not check order %s for effects of this saga: %s", order_id, exc)
            comp.unverified.append({"action": plan.action, "order_id": order_id})
            return list(effects.values())
        for effect in effects_at_api(actions, message.message_id, self.api):
            effects.setdefault(effect.action_id, effect)
        return list(effects.values())

    async def _undo(self, effect: Effect, deadline: float, ctx: StepContext) -> bool:
        """Undo one effect (idempotent at the API), retrying until done or the deadline; True when undone."""
        seq = event_seq(effect.action_id)
        await ctx.record("compensation_started", effect.as_data(), seq=seq)
        try:
            result = await self._persist(lambda: self.api.undo(effect.undo_url), deadline, ctx,
                                         f"undoing {effect.action} {effect.action_id}")
        except GaveUp as exc:
            ctx.log.error("reversal of %s %s left to a human: %s", effect.action, effect.action_id, exc)
            # The log says the undo was given up on (not just that it started): the answer of a saga that
            # fails later, and whoever reads the timeline, see the reversal is a human's to do.
            await ctx.record("compensation_failed", {**effect.as_data(), "error": str(exc)[:500]}, seq=seq)
            return False
        metrics.COMPENSATIONS.labels(effect.action).inc()
        await ctx.record("compensation_completed", {**effect.as_data(), "status": result.get("status")}, seq=seq)
        return True

    async def _persist(self, call: Callable[[], Awaitable[T]], deadline: float, ctx: StepContext, what: str) -> T:
        """Call until it succeeds, with exponential backoff, keeping the delivery alive; raise GaveUp on a
        permanent failure or when the next try would start past the deadline (there is always one try)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"[:300]
                if not is_retryable(exc):
                    raise GaveUp(f"{what} failed for good: {detail}") from exc
                delay = min(self.settings.compensation_backoff_max_s,
                            self.settings.backoff_base_s * 2 ** (attempt - 1))
                if time.time() + delay > deadline:
                    raise GaveUp(f"{what} still failing after {attempt} attempts: {detail}") from exc
                ctx.log.warning("%s failed (attempt %d), retry in %.2fs: %s", what, attempt, delay, detail)
                await _stay_alive(ctx, delay)


async def _stay_alive(ctx: StepContext, seconds: float) -> None:
    """Sleep, telling JetStream the step is alive in between (a backoff may outlast the ack wait)."""
    end = time.monotonic() + seconds
    beat = max(0.2, ctx.settings.ack_wait_s / 3)
    while (left := end - time.monotonic()) > 0:
        await ctx.in_progress()
        await asyncio.sleep(min(beat, left))


ACTOR = EscalationRouter
