"""What the agent may do on its own: refunds, cancellations and replacements within policy.

One set of rules, applied twice: by the decision router to the context the retriever read, and by the
execution coordinator to the order and customer read fresh from the APIs right before it acts (`recheck`), so
a forged or stale plan never becomes a side effect. The limits are per order, counting what the order's
history already holds (`refunded_total`, `refunds_active`, `replacements_active` of the order resource)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from actors.domain import ActionPlan, CustomerContext, Intent

ACTIONS = {"refund_request": "refund", "cancel_order": "cancel", "replacement_request": "replacement"}
ELIGIBLE = {
    "refund": {"delivered", "shipped", "delayed", "lost", "returned"},
    "cancel": {"processing"},
    "replacement": {"delivered", "lost", "delayed"},
}
VERB = {"refund": "refunded", "cancel": "cancelled", "replacement": "replaced"}
# The most refunded on one order without a human (this refund plus those before it), by customer tier.
TIER_REFUND_LIMIT = {"standard": 100.0, "premium": 500.0, "vip": 2000.0}
# Refunds on one order without a human: a third one goes to a colleague, whatever its amount.
MAX_AUTOMATIC_REFUNDS = 2
# Replacements on one order without a human.
MAX_AUTOMATIC_REPLACEMENTS = 1


@dataclass
class Decision:
    """The plan, and whether a human must take over (e.g. a refund above the tier's limit)."""

    plan: ActionPlan
    needs_human: bool = False


def _history(order: dict[str, Any]) -> tuple[float, int, int]:
    """What was already done on the order: (refunded total, refunds, replacements), active ones only."""
    return (float(order.get("refunded_total") or 0), int(order.get("refunds_active") or 0),
            int(order.get("replacements_active") or 0))


def evaluate(action: str, order: dict[str, Any] | None, customer: dict[str, Any] | None,
             requested: float | None, reason: str = "") -> Decision:
    """The plan for an action on an order. `requested` is the refund amount the customer named: None means
    what is still refundable; an amount that is not a finite number above zero is refused, never "all"."""
    if not order or not customer:
        return Decision(ActionPlan(action=action, approved=False, reason=reason,  # type: ignore[arg-type]
                                   policy_notes=["I need to know which of your orders this is about"]))
    order_id, status = str(order["order_id"]), str(order.get("status"))

    def refused(note: str, amount: float | None = None, human: bool = False) -> Decision:
        return Decision(ActionPlan(action=action, order_id=order_id, amount=amount,  # type: ignore[arg-type]
                                   approved=False, reason=reason, policy_notes=[note]), needs_human=human)

    if status not in ELIGIBLE[action]:
        return refused(f"the order is {status}, so it cannot be {VERB[action]}")
    refunded, refunds, replacements = _history(order)
    if action == "cancel":
        return Decision(ActionPlan(action="cancel", order_id=order_id, amount=float(order.get("total", 0)),
                                   approved=True, reason=reason))
    if action == "replacement":
        if replacements >= MAX_AUTOMATIC_REPLACEMENTS:
            return refused("this order already has a replacement; a colleague decides on another", human=True)
        if refunds:
            return refused("this order was already refunded; a colleague decides on a replacement too", human=True)
        return Decision(ActionPlan(action="replacement", order_id=order_id, approved=True, reason=reason))
    if requested is not None and not (math.isfinite(requested) and requested > 0):
        return refused("a refund has to be an amount above zero (tell me how much, or ask for a full refund)")
    refundable = float(order.get("refundable_amount", order.get("total", 0)) or 0)
    if refundable <= 0:
        return refused("this order has already been refunded in full")
    amount = round(requested if requested is not None else refundable, 2)
    if amount > refundable:
        return refused(f"the most that can be refunded on this order is ${refundable:.2f}", amount=refundable)
    limit = TIER_REFUND_LIMIT.get(str(customer.get("tier", "standard")), TIER_REFUND_LIMIT["standard"])
    if refunded + amount > limit:
        return refused(f"refunds above ${limit:.0f} on one order need a colleague's approval", amount, human=True)
    if refunds >= MAX_AUTOMATIC_REFUNDS:
        return refused("this order was already refunded twice; a colleague takes another refund", amount, human=True)
    if replacements:
        return refused("this order already has a replacement; a colleague decides on a refund too", amount,
                       human=True)
    return Decision(ActionPlan(action="refund", order_id=order_id, amount=amount, approved=True, reason=reason))


SIGN_IN_NOTE = "please sign in to your account first: I can only do that for a signed-in customer"


def guest_plan(intent: Intent | None, context: CustomerContext | None) -> ActionPlan:
    """The plan for a guest (no verified identity): never an approved action, whatever was asked."""
    action = ACTIONS.get(intent.name) if intent else None
    if action is None:
        return ActionPlan(action="none")
    order = context.order if context else None
    return ActionPlan(action=action, order_id=str(order["order_id"]) if order else None, approved=False,
                      reason=intent.name if intent else "", policy_notes=[SIGN_IN_NOTE])


def decide_action(intent: Intent, context: CustomerContext | None) -> Decision:
    """An action plan within policy for the customer's request."""
    action = ACTIONS.get(intent.name)
    if action is None:
        return Decision(ActionPlan(action="none"))
    return evaluate(action, context.order if context else None, context.customer if context else None,
                    intent.entities.amount, reason=intent.name)


def recheck(plan: ActionPlan, email: str, order: dict[str, Any] | None,
            customer: dict[str, Any] | None, *, approved_by_colleague: bool = False) -> str | None:
    """Why an approved plan may not be executed now, given the order and the customer read fresh from the
    APIs (None when it may): the order must be the message's customer's, and the same rules must approve the
    same action and amount. A colleague's approval lifts only the limits that send a plan to a person (a tier's
    refund limit, the count of refunds or replacements), never eligibility or the refundable amount."""
    if order is None or customer is None:
        return f"order {plan.order_id} or customer {email} not found"
    if str(order.get("customer_email", "")).lower() != email.lower() or order.get("customer_id") != customer.get("id"):
        return f"order {plan.order_id} does not belong to {email}"
    if plan.action == "refund" and plan.amount is None:
        return "a refund plan without an amount"
    decision = evaluate(plan.action, order, customer, plan.amount if plan.action == "refund" else None)
    if not decision.plan.approved and not (approved_by_colleague and decision.needs_human):
        return f"policy: {decision.plan.policy_notes[0]}"
    return None
