"""What the agent may do on its own: refunds, cancellations and replacements within policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saga.protocol import ActionPlan, CustomerContext, Intent

ACTIONS = {"refund_request": "refund", "cancel_order": "cancel", "replacement_request": "replacement"}
ELIGIBLE = {
    "refund": {"delivered", "shipped", "delayed", "lost", "returned"},
    "cancel": {"processing"},
    "replacement": {"delivered", "lost", "delayed"},
}
VERB = {"refund": "refunded", "cancel": "cancelled", "replacement": "replaced"}
# Largest refund approved without a human, by customer tier.
TIER_REFUND_LIMIT = {"standard": 100.0, "premium": 500.0, "vip": 2000.0}


@dataclass
class Decision:
    """The plan, and whether a human must take over (e.g. a refund above the tier's limit)."""

    plan: ActionPlan
    needs_human: bool = False


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
    order: dict[str, Any] | None = context.order if context else None
    customer = context.customer if context else None
    if not order or not customer:
        return Decision(ActionPlan(action=action, approved=False, reason=intent.name,
                                   policy_notes=["I need to know which of your orders this is about"]))
    order_id, status = str(order["order_id"]), str(order.get("status"))
    if status not in ELIGIBLE[action]:
        return Decision(ActionPlan(action=action, order_id=order_id, approved=False, reason=intent.name,
                                   policy_notes=[f"the order is {status}, so it cannot be {VERB[action]}"]))
    if action == "cancel":
        return Decision(ActionPlan(action="cancel", order_id=order_id, amount=float(order.get("total", 0)),
                                   approved=True, reason=intent.name))
    if action == "replacement":
        return Decision(ActionPlan(action="replacement", order_id=order_id, approved=True, reason=intent.name))
    refundable = float(order.get("refundable_amount", order.get("total", 0)) or 0)
    requested = intent.entities.amount
    amount = round(requested if requested else refundable, 2)
    if refundable <= 0:
        return Decision(ActionPlan(action="refund", order_id=order_id, approved=False, reason=intent.name,
                                   policy_notes=["this order has already been refunded in full"]))
    if amount > refundable:
        return Decision(ActionPlan(action="refund", order_id=order_id, amount=refundable, approved=False,
                                   reason=intent.name,
                                   policy_notes=[f"the most that can be refunded on this order is ${refundable:.2f}"]))
    limit = TIER_REFUND_LIMIT.get(str(customer.get("tier", "standard")), TIER_REFUND_LIMIT["standard"])
    if amount > limit:
        return Decision(ActionPlan(action="refund", order_id=order_id, amount=amount, approved=False,
                                   reason=intent.name,
                                   policy_notes=[f"refunds above ${limit:.0f} need a colleague's approval"]),
                        needs_human=True)
    return Decision(ActionPlan(action="refund", order_id=order_id, amount=amount, approved=True, reason=intent.name))
