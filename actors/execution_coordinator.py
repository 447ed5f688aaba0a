"""execution_coordinator: performs the approved action through the orders API, once.

The `Idempotency-Key` is derived from the message id, the action and the order, so a retried or redelivered
step never repeats the effect; each effect is recorded in the saga log with how to undo it (compensation).

Right before acting it reads the order, the customer and the order's actions fresh from the APIs and applies
the policy again (`policy.recheck`): a plan for another customer's order, or over a limit that the order's
history now reaches (a forged bus message, a stale decision, a concurrent saga), performs nothing and fails
the step for good, so the error handler hands it to a human with the reason.

A plan that `requires` a person's yes (`actors.decisions`) is not executed when it arrives: the step waits for
that signal (or its deadline), and runs again when the wait ends. A yes or an approval executes it (an approval
lets the plan exceed what the agent may do alone, never the rest of the policy); a no, a denial, another
question or silence executes nothing, and the answer says so. An approval nobody gave in time fails the step
for good, so the error handler opens a ticket and the customer is told a colleague has it."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.base import Actor, PermanentError, StepContext, StepResult
from actors.commerce import CommerceClient
from actors.decisions import APPROVAL, decision_of, done_text, executes, not_done_text
from actors.domain import ActionPlan, AgentResponse, ExecutedAction, ExecutionResult, Message, PersonDecision
from actors.policy import recheck
from config.settings import Settings
from observability import metrics
from saga.actor import Wait, Wakeup
from saga.log import SagaEvent


def idempotency_key(message_id: str, action: str, order_id: str) -> str:
    """The key that makes an action happen at most once per message."""
    return f"{saga_key_prefix(message_id)}{action}:{order_id}"


def saga_key_prefix(message_id: str) -> str:
    """What every idempotency key of one saga starts with: recovery finds the effects the API performed for
    this saga even when their answer was lost (no `action_executed` recorded). Message ids have no colon."""
    return f"{message_id}:"


def earlier_decision(history: list[SagaEvent], signal: str) -> Wakeup | None:
    """How an earlier wait of this saga for `signal` ended (the latest), as the wake-up it gave; None if none did."""
    ends = [e for e in history if e.kind in ("signal_received", "timer_fired") and e.data.get("signal") == signal]
    if not ends:
        return None
    end = max(ends, key=lambda e: (e.step_index, e.seq))
    return Wakeup(kind="signal" if end.kind == "signal_received" else "timer", signal=signal,
                  payload=dict(end.data.get("payload") or {}), waited_s=float(end.data.get("waited_s") or 0.0),
                  wait_data={})


class ExecutionCoordinator(Actor):
    """Adds `payload.execution_result`."""

    name = "execution_coordinator"

    async def start(self, settings: Settings) -> None:
        self.api = CommerceClient(settings)
        self.timeouts = {"confirmation": settings.confirmation_timeout_s, "approval": settings.approval_timeout_s}

    async def stop(self) -> None:
        await self.api.close()

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any] | StepResult:
        plan = message.payload.action_plan
        if plan is not None and plan.requires is not None and plan.order_id:
            return await self._after_a_person(message, plan, ctx)
        if plan is None or plan.action == "none" or not plan.approved or not plan.order_id:
            return {"execution_result": ExecutionResult(success=True, detail="nothing to execute")}
        return await self._execute(message, plan, ctx)

    async def _after_a_person(self, message: Message, plan: ActionPlan, ctx: StepContext) -> dict[str, Any] | StepResult:
        """Wait for the person the plan requires; then act on their decision. A step run again after a failure
        (recovery resumes the saga at this step) does not ask again: the decision already given stands."""
        wakeup = ctx.wakeup or earlier_decision(await ctx.history(), plan.requires or "")
        if wakeup is None:
            pending = {"action": plan.action, "order_id": plan.order_id, "amount": plan.amount,
                       "session_id": message.session_id, "customer": message.payload.customer_email,
                       "notes": plan.policy_notes[:3]}
            return StepResult(wait=Wait(signal=plan.requires or "", timeout_s=self.timeouts[plan.requires or ""],
                                        data=pending))
        decision = decision_of(plan.requires or "", wakeup.kind, wakeup.payload, wakeup.waited_s)
        if ctx.attempt == 1:
            metrics.DECISIONS.labels(decision.kind, decision.outcome).inc()
        if decision.kind == APPROVAL and decision.outcome == "timeout":
            raise PermanentError(f"no colleague decided on the {plan.action} of order {plan.order_id} in time")
        if not executes(decision):
            return {"decision": decision,
                    "execution_result": ExecutionResult(success=True, detail=f"not executed: {decision.outcome}"),
                    "response": AgentResponse(text=not_done_text(plan, decision), model="supportmesh-decision")}
        enrichment = await self._execute(message, plan, ctx, decision)
        return {**enrichment, "decision": decision,
                "response": AgentResponse(text=done_text(plan, decision), model="supportmesh-decision")}

    async def _execute(self, message: Message, plan: ActionPlan, ctx: StepContext,
                       decision: PersonDecision | None = None) -> dict[str, Any]:
        """Carry out the plan once (idempotency key), after checking it again on today's data."""
        order_id = str(plan.order_id)
        if not message.metadata.customer_verified:
            # The decision router never approves a guest's action; a message that says otherwise is refused here
            # too (the saga fails and goes to a human), so no side effect ever rests on an unverified claim.
            raise PermanentError("refusing to act for a customer who is not signed in")
        key = idempotency_key(message.message_id, plan.action, order_id)
        email = message.payload.customer_email
        order, customer, actions = await asyncio.gather(
            self.api.order(order_id), self.api.customer(email), self.api.order_actions(order_id))
        # This saga's own effect, already at the API (a retried or redelivered step), was checked when it was
        # made: the request below replays it. Otherwise the plan must pass the policy on today's data.
        if not any(a.get("idempotency_key") == key for a in actions):
            refusal = recheck(plan, email, order, customer,
                              approved_by_colleague=decision is not None and decision.outcome == "approved")
            if refusal is not None:  # recorded with the failed step; the error handler opens the ticket
                raise PermanentError(f"{plan.action} on order {plan.order_id} refused at execution: {refusal}")
        body: dict[str, Any] = {"reason": plan.reason or "customer request"}
        if plan.action == "refund":
            body["amount"] = plan.amount
        done = await self.api.act(plan.action, order_id, body, key)
        executed = ExecutedAction(action=plan.action, order_id=order_id, action_id=done["action_id"],
                                  idempotency_key=key, status=done.get("status", "active"), amount=done.get("amount"))
        await ctx.record("action_executed", {
            **executed.model_dump(mode="json"),
            "undo": {"method": "POST", "url": self.api.undo_url(done["action_id"])},
        }, seq=0)
        detail = f"{plan.action} {done['action_id']} on order {plan.order_id}"
        return {"execution_result": ExecutionResult(success=True, actions=[executed], detail=detail)}


ACTOR = ExecutionCoordinator
