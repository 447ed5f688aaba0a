"""execution_coordinator: performs the approved action through the orders API, once.

The `Idempotency-Key` is derived from the message id, the action and the order, so a retried or redelivered
step never repeats the effect; each effect is recorded in the saga log with how to undo it (compensation).

Right before acting it reads the order, the customer and the order's actions fresh from the APIs and applies
the policy again (`policy.recheck`): a plan for another customer's order, or over a limit that the order's
history now reaches (a forged bus message, a stale decision, a concurrent saga), performs nothing and fails
the step for good, so the error handler hands it to a human with the reason."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.base import Actor, PermanentError, StepContext
from actors.commerce import CommerceClient
from actors.domain import ExecutedAction, ExecutionResult, Message
from actors.policy import recheck
from config.settings import Settings


def idempotency_key(message_id: str, action: str, order_id: str) -> str:
    """The key that makes an action happen at most once per message."""
    return f"{saga_key_prefix(message_id)}{action}:{order_id}"


def saga_key_prefix(message_id: str) -> str:
    """What every idempotency key of one saga starts with: recovery finds the effects the API performed for
    this saga even when their answer was lost (no `action_executed` recorded). Message ids have no colon."""
    return f"{message_id}:"


class ExecutionCoordinator(Actor):
    """Adds `payload.execution_result`."""

    name = "execution_coordinator"

    async def start(self, settings: Settings) -> None:
        self.api = CommerceClient(settings)

    async def stop(self) -> None:
        await self.api.close()

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        plan = message.payload.action_plan
        if plan is None or plan.action == "none" or not plan.approved or not plan.order_id:
            return {"execution_result": ExecutionResult(success=True, detail="nothing to execute")}
        if not message.metadata.customer_verified:
            # The decision router never approves a guest's action; a message that says otherwise is refused here
            # too (the saga fails and goes to a human), so no side effect ever rests on an unverified claim.
            raise PermanentError("refusing to act for a customer who is not signed in")
        key = idempotency_key(message.message_id, plan.action, plan.order_id)
        email = message.payload.customer_email
        order, customer, actions = await asyncio.gather(
            self.api.order(plan.order_id), self.api.customer(email), self.api.order_actions(plan.order_id))
        # This saga's own effect, already at the API (a retried or redelivered step), was checked when it was
        # made: the request below replays it. Otherwise the plan must pass the policy on today's data.
        if not any(a.get("idempotency_key") == key for a in actions):
            refusal = recheck(plan, email, order, customer)
            if refusal is not None:  # recorded with the failed step; the error handler opens the ticket
                raise PermanentError(f"{plan.action} on order {plan.order_id} refused at execution: {refusal}")
        body: dict[str, Any] = {"reason": plan.reason or "customer request"}
        if plan.action == "refund":
            body["amount"] = plan.amount
        done = await self.api.act(plan.action, plan.order_id, body, key)
        executed = ExecutedAction(action=plan.action, order_id=plan.order_id, action_id=done["action_id"],
                                  idempotency_key=key, status=done.get("status", "active"), amount=done.get("amount"))
        await ctx.record("action_executed", {
            **executed.model_dump(mode="json"),
            "undo": {"method": "POST", "url": self.api.undo_url(done["action_id"])},
        }, seq=0)
        detail = f"{plan.action} {done['action_id']} on order {plan.order_id}"
        return {"execution_result": ExecutionResult(success=True, actions=[executed], detail=detail)}


ACTOR = ExecutionCoordinator
