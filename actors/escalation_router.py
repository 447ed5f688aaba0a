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
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from actors.base import Actor, FailureContext, StepContext, StepResult
from actors.commerce import CommerceClient
from actors.execution_coordinator import saga_key_prefix
from config.settings import Settings
from observability import metrics
from saga.log import SagaEvent
from saga.protocol import ANSWERING_ACTOR, AgentResponse, ErrorInfo, Message
from saga.results import SagaEffects, action_noun, build_result, execution_with_undone, saga_effects
from saga.retry import is_retryable

TRANSIENT = frozenset({"retryable_exhausted", "dead_letter", "stalled"})
# The tickets API takes summaries up to this long.
TICKET_SUMMARY_MAX = 4000
# The orders API names cancellations "cancellation"; the saga's action plans say "cancel".
API_ACTION = {"cancellation": "cancel"}

T = TypeVar("T")


class GaveUp(Exception):
    """A compensation call that did not succeed before the deadline, or failed for good."""


@dataclass(frozen=True)
class Effect:
    """A side effect of this saga: recorded in the saga log, or found at the orders API by its key."""

    action: str
    order_id: str
    action_id: str
    undo_url: str
    amount: float | None = None
    source: str = "saga_log"

    def as_data(self) -> dict[str, Any]:
        """The effect as saga-event data."""
        return {"action": self.action, "order_id": self.order_id, "action_id": self.action_id,
                "amount": self.amount, "undo_url": self.undo_url, "source": self.source}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Effect:
        """An effect from `action_executed` or `compensation_completed` data."""
        undo = data.get("undo") or {}
        return cls(action=str(data.get("action", "action")), order_id=str(data.get("order_id", "?")),
                   action_id=str(data.get("action_id", "")), undo_url=str(data.get("undo_url") or undo.get("url", "")),
                   amount=data.get("amount"), source=str(data.get("source", "saga_log")))


@dataclass
class Compensation:
    """What recovery did about the saga's side effects."""

    undone: list[Effect] = field(default_factory=list)  # reversed (now or by an earlier attempt)
    pending: list[Effect] = field(default_factory=list)  # could not be reversed: a human must do it
    unverified: list[dict[str, str]] = field(default_factory=list)  # effects that may exist: could not check
    kept: list[Effect] = field(default_factory=list)  # done and kept (the customer is told)


# ---- reading the saga history ----------------------------------------------------------------------------


def redeliveries(history: list[SagaEvent]) -> int:
    """How often recovery already resumed this saga."""
    return sum(1 for e in history if e.kind == "redelivered" and e.data.get("source") == "escalation_router")


def already_escalated(history: list[SagaEvent]) -> bool:
    """True when an earlier step of this saga already handed it to a human."""
    return any(e.kind == "escalated" for e in history)


def recorded_effects(history: list[SagaEvent]) -> list[Effect]:
    """Side effects recorded by `action_executed`, oldest first."""
    return [Effect.from_data(e.data) for e in history if e.kind == "action_executed"]


def undone_effects(history: list[SagaEvent]) -> list[Effect]:
    """Side effects whose undo was recorded (`compensation_completed`) anywhere in the saga, in undo order.
    Older records carry only the action id: their details come from the matching `action_executed`."""
    executed = {e.action_id: e for e in recorded_effects(history)}
    out: dict[str, Effect] = {}
    for event in history:
        if event.kind == "compensation_completed":
            action_id = str(event.data.get("action_id", ""))
            out.setdefault(action_id, executed.get(action_id) or Effect.from_data(event.data))
    return list(out.values())


def compensation_began(history: list[SagaEvent]) -> float | None:
    """When compensation first started for this saga (its deadline counts from there across redeliveries)."""
    times = [e.ts for e in history if e.kind == "compensation_started"]
    return min(times) if times else None


def must_not_route_back(error: ErrorInfo | None, history: list[SagaEvent]) -> bool:
    """True when routing the message on would only reach the same failure again: the answering step itself
    failed, or the saga failed after it was already escalated."""
    return error is not None and (error.actor == ANSWERING_ACTOR or already_escalated(history))


def should_redeliver(error: ErrorInfo, history: list[SagaEvent], max_redeliveries: int) -> bool:
    """Resume the failed route: a transient failure, with redelivery budget left, that is not a loop."""
    return (error.kind in TRANSIENT and bool(error.failed_route)
            and redeliveries(history) < max_redeliveries and not must_not_route_back(error, history))


def effects_at_api(actions: list[dict[str, Any]], message_id: str, api: CommerceClient) -> list[Effect]:
    """The actions the orders API performed under this saga's idempotency keys, oldest first."""
    prefix = saga_key_prefix(message_id)
    mine = [a for a in actions if str(a.get("idempotency_key", "")).startswith(prefix)]
    return [Effect(action=API_ACTION.get(str(a.get("type")), str(a.get("type"))), order_id=str(a["order_id"]),
                   action_id=str(a["action_id"]), undo_url=api.undo_url(str(a["action_id"])),
                   amount=a.get("amount"), source="orders_api")
            for a in sorted(mine, key=lambda a: str(a.get("created_at", "")))]


def event_seq(action_id: str) -> int:
    """A stable per-action counter for compensation event keys (the same action gets the same key on every
    attempt, so a retried step never records an undo twice)."""
    return zlib.crc32(action_id.encode())


# ---- the customer's reply and the ticket -----------------------------------------------------------------


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


def _opening(reason: str) -> str:
    if reason == "critical_sentiment":
        return ("I'm sorry about this experience. This needs a person's attention, so I've handed your "
                "conversation to a senior colleague.")
    if reason == "needs_approval":
        return "Your request needs a colleague's approval, so I've passed it on with all the details."
    if reason.startswith("error:"):
        return ("I couldn't complete your request because one of our systems is not responding, so I've "
                "handed it to a colleague.")
    return "I want to make sure you get the right answer, so I've handed your conversation to a colleague."


def effect_sentences(comp: Compensation) -> list[str]:
    """One honest sentence per side effect: reversed, pending reversal, unverified, or done."""
    parts = [f"I had started a {action_noun(e.action)} on order {e.order_id}, and I've reversed it so nothing happens "
             "twice; my colleague will complete it with you." for e in comp.undone]
    parts += [f"I had started a {action_noun(e.action)} on order {e.order_id} and could not reverse it automatically; "
              "a colleague will reverse it by hand and confirm with you." for e in comp.pending]
    parts += [f"I may have started a {action_noun(u['action'])} on order {u['order_id']} but could not confirm it with "
              "our systems; a colleague will check it and make sure nothing happens twice." for u in comp.unverified]
    parts += [f"The {e.action} on order {e.order_id} has been done." for e in comp.kept]
    return parts


def holding_reply(message: Message, reason: str, ticket_id: str | None, comp: Compensation) -> str:
    """An honest reply: what happened, what was undone, what is pending, what happens next."""
    name = ""
    if message.payload.context and message.payload.context.customer:
        name = str(message.payload.context.customer.get("name", "")).split(" ")[0]
    ticket = f" (ticket {ticket_id})" if ticket_id else ""
    return " ".join([f"Hi {name}," if name else "Hello,", _opening(reason), *effect_sentences(comp),
                     f"You'll hear from us by email within one business day{ticket}."])


def ticket_summary(message: Message, reason: str, comp: Compensation, failure: str | None = None) -> str:
    """What the human needs to know, reversals still to do first (and, for a failed saga, why it failed)."""
    p = message.payload
    lines = [f"Reason: {reason}", f"Customer said: {p.customer_message[:500]}"]
    if not message.metadata.customer_verified:
        lines.append("NOT SIGNED IN: a guest; the email is only what they typed: verify who they are before "
                     "discussing or changing any order")
    if failure:
        lines.append(f"Saga failed for good (nothing automatic will happen any more): {failure[:300]}")
    if p.intent:
        lines.append(f"Intent: {p.intent.name} ({p.intent.confidence:.2f})")
    if p.action_plan and p.action_plan.action != "none":
        lines.append(f"Plan: {p.action_plan.action} on {p.action_plan.order_id} approved={p.action_plan.approved}")
    if p.error:
        lines.append(f"Failure: {p.error.actor} step {p.error.step_index}: {p.error.detail[:300]}")
    lines += [f"REVERSAL PENDING: {e.action} {e.action_id} on {e.order_id} could not be undone automatically; "
              f"undo it by hand ({e.undo_url})" for e in comp.pending]
    lines += [f"UNVERIFIED: a {u['action']} on {u['order_id']} may have been performed (the orders API could not "
              "be checked); check the order's actions and undo it" for u in comp.unverified]
    lines += [f"Compensated: {e.action} {e.action_id} on {e.order_id}" for e in comp.undone]
    lines += [f"Done and kept: {e.action} {e.action_id} on {e.order_id}" for e in comp.kept]
    return "\n".join(lines)


def failed_saga_compensation(effects: SagaEffects, undo_url: Callable[[str], str]) -> Compensation:
    """A failed saga's effects as the ticket lists them: reversals begun but not confirmed, or given up, are
    pending (a human must make sure); `undo_url` gives the undo link of effects known only from the message."""
    def effect(data: dict[str, Any]) -> Effect:
        found = Effect.from_data(data)
        return found if found.undo_url else replace(found, undo_url=undo_url(found.action_id))

    return Compensation(undone=[effect(e) for e in effects.undone],
                        pending=[effect(e) for e in [*effects.reversing, *effects.not_reversed]],
                        kept=[effect(e) for e in effects.kept])


def ticket_priority(reason: str, comp: Compensation) -> str:
    """Urgent for critical sentiment; high when a reversal waits for a human."""
    if reason == "critical_sentiment":
        return "urgent"
    return "high" if comp.pending or comp.unverified else "normal"


# ---- the actor -------------------------------------------------------------------------------------------


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
        history = await ctx.saga.history(message.message_id)
        error = message.payload.error
        if error is not None and should_redeliver(error, history, self.settings.max_redeliveries):
            return await self._redeliver(message, error, history, ctx)
        final = must_not_route_back(error, history)
        # A saga that already answered the customer keeps its effects: the answer told them so.
        answered = final and await ctx.results.get(message.message_id) is not None
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
        if await ctx.results.save(result) and message.metadata.reply_subject:
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
        if plan is None or plan.action == "none" or not plan.approved or not plan.order_id:
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
