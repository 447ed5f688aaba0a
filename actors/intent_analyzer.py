"""intent_analyzer: the LLM with the specification's structured prompt, parsed robustly into `Intent`."""

from __future__ import annotations

import ast
import re
from typing import Any

import orjson
from pydantic import ValidationError

from actors import entities
from actors.base import Actor, StepContext
from actors.domain import Entities, Intent, Message
from actors.llm import LLMClient
from actors.prompts import INTENTS, intent_messages
from config.settings import Settings

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class IntentParseError(ValueError):
    """The model's answer is not the JSON object asked for."""


def parse_intent(text: str, model: str = "") -> Intent:
    """An `Intent` from a model's answer: tolerates code fences, prose around the JSON, single quotes and
    trailing commas; raises IntentParseError saying what is wrong otherwise."""
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise IntentParseError("no JSON object found")
    raw = _TRAILING_COMMA.sub(r"\1", candidate[start:end + 1])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            data = ast.literal_eval(raw.replace("null", "None").replace("true", "True").replace("false", "False"))
        except (ValueError, SyntaxError) as exc:
            raise IntentParseError(f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict) or "intent" not in data:
        raise IntentParseError('the object has no "intent" field')
    name = str(data.get("intent") or "").strip().lower()
    ents = data.get("entities") or {}
    if not isinstance(ents, dict):
        ents = {}
    try:
        confidence = float(data.get("confidence", 0.5))
    except (TypeError, ValueError) as exc:
        raise IntentParseError("confidence is not a number") from exc
    try:
        parsed = Entities.model_validate({
            "order_number": _str_or_none(ents.get("order_number")),
            "tracking_number": _str_or_none(ents.get("tracking_number")),
            "product": _str_or_none(ents.get("product") or ents.get("product_name")),
            "amount": _amount(ents.get("amount")),
        })
    except ValidationError as exc:
        raise IntentParseError(f"invalid entities: {exc.errors()[0]['msg']}") from exc
    if name not in INTENTS:
        name, confidence = "general_inquiry", min(confidence, 0.5)
    return Intent(name=name, confidence=max(0.0, min(1.0, confidence)), entities=parsed, model=model)


def _str_or_none(value: Any) -> str | None:
    if value in (None, "", "null"):
        return None
    return str(value).lstrip("#").strip() or None


def _amount(value: Any) -> float | None:
    if value in (None, "", "null"):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return entities.parse_amount(str(value))


def with_safety_net(intent: Intent, text: str) -> Intent:
    """Fill entities the model missed but the text plainly contains."""
    ents = intent.entities
    updates = {
        "order_number": ents.order_number or entities.order_number(text),
        "tracking_number": ents.tracking_number or entities.tracking_number(text),
        "amount": ents.amount if ents.amount is not None else entities.amount(text),
        "product": ents.product or entities.product(text),
    }
    return intent.model_copy(update={"entities": Entities(**updates)})


class IntentAnalyzer(Actor):
    """Adds `payload.intent`."""

    name = "intent_analyzer"

    async def start(self, settings: Settings) -> None:
        self.llm = LLMClient(settings)
        await self.llm.warm_up()

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        text = message.payload.customer_message
        result = await self.llm.complete(intent_messages(text), purpose="intent")
        reasked = False
        try:
            intent = parse_intent(result.text, result.model)
        except IntentParseError as problem:
            ctx.log.warning("intent answer invalid (%s); asking again", problem)
            reasked = True
            result = await self.llm.complete(intent_messages(text, problem=str(problem)), purpose="intent")
            try:
                intent = parse_intent(result.text, result.model)
            except IntentParseError:
                intent = Intent(name="general_inquiry", confidence=0.2, model=result.model)
        intent = with_safety_net(intent, text).model_copy(update={"reasked": reasked})
        return {"intent": intent}


ACTOR = IntentAnalyzer
