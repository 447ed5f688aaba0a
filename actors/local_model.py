"""The local deterministic model (`supportmesh-local/deterministic`): no key and no network. The LLM client calls
`complete` directly (LiteLLM would add ~3 ms of CPU per call: a thread hop, logging and cost records); it is
also a LiteLLM custom provider (`register`).

It reads the same prompts a hosted model reads (`actors.prompts`): for an intent prompt it answers strict JSON
from keyword and pattern rules; for a response prompt it composes a reply from the data in the prompt only
(customer, order, tracking, action plan), so it never invents an order number or an amount. Same prompt, same
answer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson

from actors import entities
from actors.prompts import INTENT_TASK, RESPONSE_TASK, extract_data

PROVIDER = "supportmesh-local"
MODEL = "deterministic"

# Ordered: the first matching rule wins.
INTENT_RULES: list[tuple[str, re.Pattern[str], float]] = [
    ("human_request", re.compile(r"\b(?:talk|speak|chat|write)\s{1,3}(?:to|with)\s{1,3}(?:a\s{1,3}|an\s{1,3}|some\s{1,3})?"
                                 r"(?:human|person|real person|agent|representative|someone|somebody|colleague)\b|"
                                 r"\bhuman (?:agent|being)\b|\breal person\b"), 0.9),
    ("cancel_order", re.compile(r"\bcancel\w*\b"), 0.92),
    ("refund_request", re.compile(r"\brefund\w*\b|\bmoney back\b|\breimburse\w*\b|\bchargeback\b"), 0.92),
    ("replacement_request", re.compile(r"\breplace\w*\b|\bexchange\b|\bsend (?:me )?(?:a )?(?:new|another)\b"), 0.88),
    ("product_issue", re.compile(r"\bbroken\b|\bdamaged\b|\bdefective\b|\bfaulty\b|\bdoes(?:n't| not) work\b|"
                                 r"\bnot working\b|\bwrong (?:item|size|colou?r|product)\b|\bcracked\b"), 0.85),
    ("delivery_complaint", re.compile(r"\blate\b|\bdelay\w*\b|\bhas(?:n't| not) arrived\b|\bnot arrived\b|"
                                      r"\bhaven't (?:received|got)\b|\bnever (?:arrived|came)\b|\bstill waiting\b|"
                                      r"\blost\b|\bmissing\b|\bnot (?:been )?delivered\b"), 0.88),
    ("order_status", re.compile(r"\bwhere(?:'s| is)\b|\bstatus\b|\btrack\w*\b|\bwhen will\b|\barriv\w*\b|"
                                r"\bshipped\b|\bdelivery date\b|\bestimated\b"), 0.85),
    ("account_question", re.compile(r"\baccount\b|\bpassword\b|\blog ?in\b|\bsign ?in\b|\bmembership\b|"
                                    r"\btier\b|\bemail address\b|\bmy address\b|\bprofile\b"), 0.82),
]
ACTIONS = frozenset({"cancel_order", "refund_request", "replacement_request"})
# A whole message that is only a greeting, thanks, an acknowledgement or a goodbye ("Hi", "thanks!", "ok", "bye"):
# conversation, answered in kind, never a failure to understand. Anchored and bounded (each part a fixed
# alternation, separators at most a few characters), so it runs in linear time on any input.
_POLITE = r"(?:please|again|so much|very much|a lot|lots|all|there|everyone|team|guys|folks|now|then|for now)"
SMALL_TALK: dict[str, re.Pattern[str]] = {
    "greeting": re.compile(r"^(?:hi|hello|hey|hiya|howdy|good (?:morning|afternoon|evening)|greetings)"
                           r"(?:[ ,]{1,3}" + _POLITE + r")?[ !.,:)]{0,5}$"),
    "thanks": re.compile(r"^(?:thanks|thank you|thx|ty|cheers|many thanks|thanks a lot|much appreciated)"
                         r"(?:[ ,]{1,3}" + _POLITE + r"){0,2}[ !.,:)]{0,5}$"),
    "goodbye": re.compile(r"^(?:bye|goodbye|bye bye|see you|see ya|have a (?:good|nice|great) (?:day|one))"
                          r"(?:[ ,]{1,3}" + _POLITE + r")?[ !.,:)]{0,5}$"),
    "acknowledgement": re.compile(r"^(?:ok|okay|k|kk|alright|all right|got it|great|perfect|cool|nice|fine|"
                                  r"sounds good|understood|sure|noted)(?:[ ,]{1,3}(?:thanks|thank you))?"
                                  r"[ !.,:)]{0,5}$"),
}
# How short a message must be to be small talk at all (the patterns are matched on nothing longer).
SMALL_TALK_MAX_CHARS = 40
# "I don't want a refund", "no need to cancel": an action the customer declines is not a request for it.
NEGATED_ACTION = re.compile(
    r"\b(?:don'?t|do not|didn'?t|never|no need to|not|no)\s+(?:(?:want|need|ask(?:ed)?\s+for|asking\s+for)\s+)?"
    r"(?:a\s+|an\s+|to\s+|the\s+)?(?:refund|cancel|replace|exchange)\w*"
)
WORDS = re.compile(r"[a-z']+")
# Below the decision router's threshold: two different actions in one message go to a person, who can ask
# which is meant, rather than the first rule deciding.
MIXED_ACTIONS_CONFIDENCE = 0.5
COMMON_WORDS = frozenset(
    "a an the i my me you your we our is are was were be been am do does did have has had can could will would "
    "please thanks thank hi hello hey help what when where why how which who it this that there here not no yes "
    "order orders item items package parcel delivery shop store buy bought purchase question service support "
    "want need get got about with for from to of in on at and or but if so just still already today yesterday "
    "week call lawyer fraud terrible worst bad good great happy angry".split()
)


def small_talk_kind(text: str) -> str | None:
    """Which kind of small talk a whole message is (greeting, thanks, goodbye, acknowledgement), or None."""
    lowered = " ".join(text.lower().split())
    if len(lowered) > SMALL_TALK_MAX_CHARS:
        return None
    return next((kind for kind, pattern in SMALL_TALK.items() if pattern.match(lowered)), None)


def analyze_intent(text: str) -> dict[str, Any]:
    """Intent, entities and confidence of a customer message, by rules."""
    lowered = text.lower()
    if small_talk_kind(text) is not None:
        return {"intent": "small_talk", "entities": {"order_number": None, "tracking_number": None,
                                                     "product": None, "amount": None}, "confidence": 0.95}
    found = {
        "order_number": entities.order_number(text),
        "tracking_number": entities.tracking_number(text),
        "product": entities.product(text),
        "amount": entities.amount(text),
    }
    asked = NEGATED_ACTION.sub(" ", lowered)
    matched = [(name, confidence) for name, pattern, confidence in INTENT_RULES if pattern.search(asked)]
    if matched:
        name, confidence = matched[0]
        if len({n for n, _ in matched} & ACTIONS) > 1:
            confidence = MIXED_ACTIONS_CONFIDENCE
        elif name == "order_status" and found["tracking_number"] is None and found["order_number"] is None:
            confidence -= 0.1  # a follow-up such as "and when will it arrive?" leans on session context
        return {"intent": name, "entities": found, "confidence": round(confidence, 2)}
    if found["tracking_number"] or found["order_number"]:
        return {"intent": "order_status", "entities": found, "confidence": 0.7}
    words = WORDS.findall(lowered)
    known = sum(1 for w in words if w in COMMON_WORDS)
    if not words or known == 0:
        return {"intent": "general_inquiry", "entities": found, "confidence": 0.2}  # gibberish
    return {"intent": "general_inquiry", "entities": found, "confidence": 0.7 if known >= 2 else 0.55}


def _money(value: Any) -> str:
    return f"${float(value):.2f}"


def _when(iso_day: str | None) -> str:
    if not iso_day:
        return "soon"
    try:
        return date.fromisoformat(iso_day[:10]).strftime("%B %-d")
    except ValueError:
        return iso_day


def _guest_reply(order: dict[str, Any], tracking: dict[str, Any], plan: dict[str, Any],
                 notes: list[str]) -> list[str]:
    """A guest's reply: the proven order's status at most, and how to sign in for anything more."""
    parts: list[str] = []
    if order:
        oid, status = order.get("order_id"), order.get("status", "unknown")
        if tracking:
            eta = tracking.get("expected_delivery") or tracking.get("estimated_delivery")
            parts.append(f"Order {oid} is {status}: the latest scan shows it at "
                         f"{tracking.get('location') or 'in transit'}, with delivery expected on {_when(eta)}.")
        else:
            parts.append(f"Order {oid} is currently {status}.")
    elif any(" was not found for the email given" in n for n in notes):
        parts.append("I couldn't find that order for the email address you gave.")
    else:
        parts.append("I can answer general questions. To look up an order, give me its order number and the "
                     "email address it was placed with.")
    if plan.get("action", "none") != "none":
        parts.append("Refunds, cancellations and replacements need you to sign in to your account first; "
                     "please sign in and ask again.")
    return parts


def confirmation_question(action: str, order_id: Any, amount: Any) -> str:
    """What the agent asks before acting: exactly what will happen, and how to answer."""
    what = {"refund": f"refund {_money(amount or 0)} on order {order_id} to your original payment method",
            "cancel": f"cancel order {order_id}; you will not be charged for it",
            "replacement": f"send you a replacement for order {order_id}"}.get(action, f"{action} order {order_id}")
    return f"I can {what}. Shall I go ahead? Reply yes to go ahead, or no to leave it as it is."


SMALL_TALK_REPLIES = {
    "greeting": "Hello! I can help with order status, deliveries, cancellations, replacements and refunds: "
                "what can I do for you?",
    "thanks": "You're welcome! Is there anything else I can help you with?",
    "goodbye": "Goodbye, and thank you for contacting us. Have a great day!",
    "acknowledgement": "Great. Is there anything else I can help you with?",
}


def small_talk_reply(text: str) -> str:
    """A friendly answer to small talk, in kind (a greeting for a greeting, "you're welcome" for thanks)."""
    return SMALL_TALK_REPLIES.get(small_talk_kind(text) or "", SMALL_TALK_REPLIES["acknowledgement"])


def compose_response(data: dict[str, Any], careful: bool = False) -> str:
    """A reply grounded only in `data` (the response prompt's data block)."""
    if (data.get("intent") or {}).get("name") == "small_talk":
        return small_talk_reply(str(data.get("customer_message", "")))
    customer = data.get("customer") or {}
    order = data.get("order") or {}
    tracking = data.get("tracking") or {}
    plan = data.get("action_plan") or {}
    intent = (data.get("intent") or {}).get("name", "general_inquiry")
    sentiment = (data.get("sentiment") or {}).get("label", "NEUTRAL")
    notes = data.get("notes") or []
    first_name = (customer.get("name") or "").split(" ")[0]
    parts: list[str] = [f"Hi {first_name}," if first_name else "Hello,"]

    if data.get("signed_in") is False:
        return " ".join(parts + _guest_reply(order, tracking, plan, notes))
    if not customer:
        parts.append("I couldn't find an account for the email address you used, so I can't look up orders "
                     "yet. Could you write from the address you ordered with, or give me your order number?")
        return " ".join(parts)
    if sentiment == "NEGATIVE":
        parts.append("I'm sorry for the trouble, and thank you for your patience.")
    for note in notes:
        if note.startswith("order ") and note.endswith(" was not found"):
            parts.append(f"I couldn't find {note[:-len(' was not found')]} on your account.")
    if any(n.startswith("the tracking number was not found") for n in notes):
        parts.append("I couldn't find that tracking number on your account.")

    action = plan.get("action", "none")
    if action != "none" and order:
        oid = order.get("order_id")
        if plan.get("requires") == "confirmation":
            parts.append(f"{confirmation_question(action, oid, plan.get('amount'))}")
        elif plan.get("requires") == "approval":
            note = (plan.get("policy_notes") or ["it needs a colleague's approval"])[0]
            parts.append(f"I can't do that on my own for order {oid}: {note}. I've passed your request to a "
                         "colleague, who will review it; I'll tell you here as soon as they decide.")
        elif plan.get("approved") and not careful:
            if action == "refund":
                parts.append(f"I've issued a refund of {_money(plan.get('amount') or 0)} for order {oid}; it "
                             "will appear on your original payment method within 5-7 business days.")
            elif action == "cancel":
                parts.append(f"I've cancelled order {oid} and you will not be charged for it.")
            elif action == "replacement":
                parts.append(f"I've arranged a replacement for order {oid}; you'll get a shipping confirmation "
                             "by email.")
        elif plan.get("approved"):
            parts.append(f"Your request for order {oid} has been approved and is being processed.")
        else:
            note = (plan.get("policy_notes") or ["it is outside what I can approve automatically"])[0]
            parts.append(f"I can't do that automatically for order {oid}: {note}.")
            if plan.get("escalate"):
                parts.append("A colleague will review your request and get back to you.")
    elif order:
        oid = order.get("order_id")
        status = order.get("status", "unknown")
        if tracking:
            where = tracking.get("location") or "in transit"
            eta = tracking.get("expected_delivery") or tracking.get("estimated_delivery")
            parts.append(f"Order {oid} is {status}: the latest scan from {tracking.get('carrier', 'the carrier')} "
                         f"shows it at {where}, with delivery expected on {_when(eta)}.")
        else:
            parts.append(f"Order {oid} is currently {status}.")
        due = order.get("expected_delivery")
        if due and status in ("shipped", "delayed") and due < datetime.now(UTC).date().isoformat():
            parts.append(f"It was due on {_when(due)}, so it is running late; I'll keep an eye on it.")
        if intent == "product_issue":
            parts.append("I'm sorry the item isn't right. Tell me whether you'd prefer a replacement or your "
                         "money back and I'll check what your order allows.")
    elif intent in ("order_status", "delivery_complaint", "refund_request", "cancel_order", "replacement_request",
                    "product_issue"):
        recent = data.get("orders") or []
        if recent:
            listing = ", ".join(f"{o.get('order_id')} ({o.get('status')})" for o in recent[:3])
            parts.append(f"Which order do you mean? Your recent orders are {listing}.")
        else:
            parts.append("Could you tell me the order number so I can look it up?")
    elif intent == "account_question":
        parts.append(f"Your account is on the {customer.get('tier', 'standard')} tier. What would you like to "
                     "change or know about it?")
    else:
        parts.append("Thanks for reaching out. I can help with order status, deliveries, cancellations, "
                     "replacements and refunds: what can I do for you?")
    return " ".join(parts)


def respond(prompt: str) -> str:
    """The local model's answer to a prompt."""
    data = extract_data(prompt) or {}
    if INTENT_TASK in prompt:
        return orjson.dumps(analyze_intent(str(data.get("customer_message", "")))).decode()
    if RESPONSE_TASK in prompt:
        return compose_response(data, careful="rejected by the policy check" in prompt)
    return "I can help with orders, deliveries, cancellations, replacements and refunds."


def _prompt_of(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)


@dataclass(frozen=True)
class Completion:
    """The local model's answer to a conversation, with token counts estimated at four characters a token."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str = f"{PROVIDER}/{MODEL}"


def complete(messages: list[dict[str, Any]]) -> Completion:
    """The local model's answer to chat `messages`: what the LLM client calls directly, and what the LiteLLM
    provider below wraps, so both paths answer and count tokens alike."""
    prompt = _prompt_of(messages)
    text = respond(prompt)
    return Completion(text=text, prompt_tokens=len(prompt) // 4, completion_tokens=len(text) // 4)


_registered = False


def register() -> None:
    """Register the provider with LiteLLM (idempotent). The LLM client calls `complete` directly; through LiteLLM
    the local model serves to warm LiteLLM up when a hosted model is configured, and anyone calling LiteLLM with
    `supportmesh-local/deterministic`."""
    global _registered
    if _registered:
        return
    import litellm
    from litellm import CustomLLM

    class LocalDeterministicLLM(CustomLLM):
        """LiteLLM custom provider wrapping `respond`."""

        def _answer(self, model: str, messages: list[dict[str, Any]]) -> Any:
            started = time.perf_counter()
            answer = complete(messages)
            response = litellm.ModelResponse(
                model=answer.model,
                choices=[{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": answer.text}}],
                usage={"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                       "total_tokens": answer.prompt_tokens + answer.completion_tokens},
            )
            response._response_ms = (time.perf_counter() - started) * 1000  # type: ignore[attr-defined]
            return response

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return self._answer(model, messages)

        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return self._answer(model, messages)

    litellm.suppress_debug_info = True
    # A known (zero) price: without it LiteLLM's cost calculator searches for the model on every call,
    # which cost more than half of each local call.
    litellm.register_model({f"{PROVIDER}/{MODEL}": {
        "litellm_provider": PROVIDER, "mode": "chat", "max_tokens": 4096, "max_input_tokens": 32768,
        "max_output_tokens": 4096, "input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
        "cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0}})
    litellm.custom_provider_map = [
        *[p for p in litellm.custom_provider_map if p.get("provider") != PROVIDER],
        {"provider": PROVIDER, "custom_handler": LocalDeterministicLLM()},
    ]
    _registered = True
