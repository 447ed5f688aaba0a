"""What the escalation router decides from a saga's history, and what it tells people: the saga's side
effects and their compensation, whether to resume or escalate, the customer's holding reply and the ticket's
summary. Pure functions and data (no I/O), so they are tested on their own."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from actors.commerce import CommerceClient
from actors.domain import ANSWERING_ACTOR, Message
from actors.execution_coordinator import saga_key_prefix
from actors.results import SagaEffects, action_noun
from saga.log import SagaEvent
from saga.protocol import ErrorInfo

TRANSIENT = frozenset({"retryable_exhausted", "dead_letter", "stalled"})
# The tickets API takes summaries up to this long.
TICKET_SUMMARY_MAX = 4000
# The orders API names cancellations "cancellation"; the saga's action plans say "cancel".
API_ACTION = {"cancellation": "cancel"}

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
    if p.intent.name == "human_request":
        return "customer_asked"
    return "handoff"


def _opening(reason: str) -> str:
    if reason == "critical_sentiment":
        return ("I'm sorry about this experience. This needs a person's attention, so I've handed your "
                "conversation to a senior colleague.")
    if reason == "customer_asked":
        return "Of course: I've handed your conversation to a colleague, who will answer you here."
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
