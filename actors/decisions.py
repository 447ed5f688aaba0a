"""What a person decided about a pending action, and what the customer is told then.

The execution coordinator waits at its step for the signal named by `ActionPlan.requires`:
- `confirmation`, sent by the gateway when the customer's next message in the session answers the question:
  `{"answer": "yes" | "no" | "other", "text": ..., "message_id": <that message's id>}`;
- `approval`, sent by the console: `{"approved": true | false, "agent": <agent>, "note": ...}`.
Its durable timer ends the wait when nobody answers (`SUPPORTMESH_CONFIRMATION_TIMEOUT_S`,
`SUPPORTMESH_APPROVAL_TIMEOUT_S`). Only a yes or an approval executes the action, once.
"""

from __future__ import annotations

from typing import Any

from actors.domain import ActionPlan, PersonDecision
from actors.results import action_noun

CONFIRMATION = "confirmation"
APPROVAL = "approval"


def decision_of(kind: str, wake_kind: str, payload: dict[str, Any], waited_s: float) -> PersonDecision:
    """The decision a wake-up carries: the signal's payload, or `timeout` when the timer ended the wait."""
    if wake_kind == "timer":
        return PersonDecision(kind=kind, outcome="timeout", waited_s=waited_s)  # type: ignore[arg-type]
    if kind == CONFIRMATION:
        answer = payload.get("answer")
        return PersonDecision(
            kind="confirmation", outcome=answer if answer in ("yes", "no") else "other", waited_s=waited_s,
            reply_message_id=_text(payload.get("message_id"), 64), reply_text=_text(payload.get("text"), 4000))
    return PersonDecision(kind="approval", outcome="approved" if payload.get("approved") is True else "denied",
                          agent=_text(payload.get("agent"), 254), note=_text(payload.get("note"), 2000),
                          waited_s=waited_s)


def executes(decision: PersonDecision) -> bool:
    """Whether the pending action is carried out: only on the customer's yes or a colleague's approval."""
    return decision.outcome in ("yes", "approved")


def _what(plan: ActionPlan) -> str:
    amount = f" of ${plan.amount:.2f}" if plan.action == "refund" and plan.amount is not None else ""
    return f"the {action_noun(plan.action)}{amount} on order {plan.order_id}"


def done_text(plan: ActionPlan, decision: PersonDecision) -> str:
    """The answer once the action is done."""
    lead = "A colleague approved your request. " if decision.outcome == "approved" else "Done. "
    if plan.action == "refund":
        body = (f"I've issued a refund of ${plan.amount or 0:.2f} for order {plan.order_id}; it will appear on your "
                "original payment method within 5-7 business days.")
    elif plan.action == "cancel":
        body = f"I've cancelled order {plan.order_id} and you will not be charged for it."
    else:
        body = f"I've arranged a replacement for order {plan.order_id}; you'll get a shipping confirmation by email."
    return lead + body


def not_done_text(plan: ActionPlan, decision: PersonDecision) -> str:
    """The answer when the action is not carried out (declined, denied, lapsed or unanswered)."""
    what = _what(plan)
    if decision.outcome == "no":
        return f"Okay, I haven't made any change: {what} was not carried out. Is there anything else I can do?"
    if decision.outcome == "other":
        return f"{what[0].upper()}{what[1:]} was not carried out: you moved on to something else."
    if decision.outcome == "denied":
        reason = f" Their note: {decision.note}" if decision.note else ""
        return (f"A colleague reviewed your request for {what} and could not approve it, so nothing was changed."
                f"{reason}")
    return (f"I didn't hear back from you, so I haven't made any change: {what} was not carried out. Just ask "
            "again whenever you like.")


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None
