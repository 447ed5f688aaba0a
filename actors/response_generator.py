"""response_generator: the reply to the customer from the LLM, grounded in the retrieved context and plan."""

from __future__ import annotations

from typing import Any

from actors.base import Actor, StepContext
from actors.domain import AgentResponse, Message
from actors.llm import LLMClient
from actors.prompts import response_messages
from config.settings import Settings


def prompt_data(message: Message) -> dict[str, Any]:
    """What the model may use: the customer's words and what the earlier steps found, nothing else."""
    p = message.payload
    ctx = p.context
    return {
        "customer_message": p.customer_message,
        "signed_in": message.metadata.customer_verified,
        "sentiment": p.sentiment.model_dump(include={"label", "urgency"}) if p.sentiment else None,
        "intent": p.intent.model_dump(include={"name", "confidence", "entities"}) if p.intent else None,
        "customer": ({k: ctx.customer.get(k) for k in ("name", "tier", "email")} if ctx and ctx.customer else None),
        "orders": ctx.orders if ctx else [],
        "order": ctx.order if ctx else None,
        "tracking": ctx.tracking if ctx else None,
        "notes": ctx.notes if ctx else [],
        "action_plan": p.action_plan.model_dump() if p.action_plan else None,
    }


def regeneration_number(message: Message) -> int:
    """How many drafts were written before this one (the guardrail sends rejected drafts back here)."""
    return message.route.steps[: message.route.current_step].count("response_generator")


class ResponseGenerator(Actor):
    """Adds `payload.response`."""

    name = "response_generator"

    async def start(self, settings: Settings) -> None:
        self.llm = LLMClient(settings)
        await self.llm.warm_up()

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        regeneration = regeneration_number(message)
        check = message.payload.guardrail_check
        violations = list(check.violations) if (regeneration and check and not check.passed) else None
        result = await self.llm.complete(response_messages(prompt_data(message), violations), purpose="response")
        text = result.text.strip() or "Thanks for your message; a colleague will follow up shortly."
        return {"response": AgentResponse(text=text[:4000], model=result.model, fallback_used=result.fallback_used,
                                          regeneration=regeneration)}


ACTOR = ResponseGenerator
