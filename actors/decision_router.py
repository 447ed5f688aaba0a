"""decision_router (smart router): escalation for critical sentiment, low confidence or a customer asking for a
person, an action plan within policy, and the execution step inserted when an action is approved.

An approved plan waits for the customer's yes (`requires: confirmation`, while SUPPORTMESH_CONFIRM_ACTIONS is on);
a plan beyond what the agent may do alone waits for a colleague's decision (`requires: approval`). Either way the
customer is answered first and the execution coordinator then waits (`registry.route_answering_first`)."""

from __future__ import annotations

from actors.base import Actor, StepContext, StepResult
from actors.domain import ActionPlan, Message
from actors.policy import decide_action, guest_plan
from actors.registry import ACTION, ESCALATION, route, route_answering_first
from config.settings import Settings

# The intent of a customer who asks for a person (actors/local_model.py, actors/prompts.py).
HUMAN_REQUEST = "human_request"


class DecisionRouter(Actor):
    """Adds `payload.action_plan` and rewrites the rest of the route."""

    name = "decision_router"
    kind = "router"

    async def start(self, settings: Settings) -> None:
        self.min_confidence = settings.min_intent_confidence
        self.confirm_actions = settings.confirm_actions

    async def handle(self, message: Message, ctx: StepContext) -> StepResult:
        p = message.payload
        escalate = list(route(ESCALATION))  # the registry's route to a human
        if p.sentiment is not None and p.sentiment.urgency == "critical":
            return StepResult(enrichment={"action_plan": ActionPlan(reason="critical_sentiment")},
                              remaining_route=escalate, reason="critical_sentiment")
        if p.intent is None or p.intent.confidence < getattr(self, "min_confidence", 0.6):
            return StepResult(enrichment={"action_plan": ActionPlan(reason="low_confidence")},
                              remaining_route=escalate, reason="low_confidence")
        if p.intent.name == HUMAN_REQUEST:  # the customer asked for a person: hand the conversation over
            return StepResult(enrichment={"action_plan": ActionPlan(reason=HUMAN_REQUEST)},
                              remaining_route=escalate, reason=HUMAN_REQUEST)
        if not message.metadata.customer_verified:
            # A guest never causes a side effect: the reply says how to sign in.
            return StepResult(enrichment={"action_plan": guest_plan(p.intent, p.context)})
        decision = decide_action(p.intent, p.context)
        plan = decision.plan
        if decision.needs_human:
            waiting = plan.model_copy(update={"requires": "approval"})
            return StepResult(enrichment={"action_plan": waiting}, reason="needs_approval",
                              remaining_route=list(route_answering_first(ACTION, after=self.name)))
        if plan.approved and getattr(self, "confirm_actions", True):
            waiting = plan.model_copy(update={"requires": "confirmation"})
            return StepResult(enrichment={"action_plan": waiting}, reason=f"confirm_{plan.action}",
                              remaining_route=list(route_answering_first(ACTION, after=self.name)))
        if plan.approved:
            return StepResult(enrichment={"action_plan": plan}, remaining_route=list(route(ACTION, after=self.name)),
                              reason=f"approved_{plan.action}")
        return StepResult(enrichment={"action_plan": plan})


ACTOR = DecisionRouter
