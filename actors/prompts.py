"""The prompts of the intent analyzer and the response generator.

A real model and the local deterministic model read the same prompts: the data travels as compact JSON
between clear markers, so the local model parses exactly what a hosted model is shown.
"""

from __future__ import annotations

from typing import Any

import orjson

INTENTS = (
    "order_status", "delivery_complaint", "refund_request", "cancel_order", "product_issue",
    "replacement_request", "account_question", "general_inquiry", "small_talk",
    "human_request",
)
INTENT_TASK = "TASK: intent_analysis"
RESPONSE_TASK = "TASK: customer_response"
DATA_START = "<<<DATA"
DATA_END = "DATA>>>"

SYSTEM = ("You are the customer-support agent of an online shop. You are precise, honest and brief, and you only "
          "state facts present in the data you are given.")


def intent_messages(customer_message: str, problem: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking for the intent and entities of a customer message as strict JSON."""
    prompt = f"""{INTENT_TASK}
Analyze this customer support message and extract:
1. Intent: one of {", ".join(INTENTS)}
2. Entities: order_number, tracking_number, product, amount (null when absent)
3. Confidence: how sure you are, from 0.0 to 1.0

Message (JSON string between the markers):
{DATA_START}
{orjson.dumps({"customer_message": customer_message}).decode()}
{DATA_END}

Respond with strict JSON only, no prose, no code fences:
{{"intent": "...", "entities": {{"order_number": null, "tracking_number": null, "product": null, "amount": null}}, "confidence": 0.0}}"""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    if problem:
        messages.append({"role": "user", "content": f"Your previous answer was not valid: {problem}. "
                                                    "Answer again with the JSON object only."})
    return messages


def response_messages(data: dict[str, Any], violations: list[str] | None = None) -> list[dict[str, str]]:
    """Chat messages asking for the reply to the customer, grounded in `data` (customer message, sentiment,
    intent, retrieved context, action plan)."""
    rules = [
        "Acknowledge the issue, explain the current status from the data, and say what happens next.",
        "Use only order numbers, amounts, dates and locations present in the data.",
        "Only say an action (refund, cancellation, replacement) is done when action_plan.approved is true and "
        "action_plan.requires is null.",
        "When action_plan.requires is \"confirmation\", nothing is done yet: say exactly what you will do (the "
        "action, the order number, the amount) and ask the customer to reply yes to go ahead or no to leave it.",
        "When action_plan.requires is \"approval\", nothing is done yet: explain the policy note and say a "
        "colleague will review the request and the customer will be told here.",
        "When action_plan.approved is false, explain the policy note politely.",
        "Never promise or guarantee anything beyond the action plan. 2 to 5 sentences, no markdown.",
        "When signed_in is false the customer is a guest: say that to look up an order they give its number and "
        "the email it was placed with, and that refunds, cancellations and replacements need them to sign in.",
    ]
    extra = ""
    if violations:
        extra = ("\nA previous draft was rejected by the policy check for: " + "; ".join(violations) +
                 ". Write a more careful reply that avoids these problems.")
    prompt = f"""{RESPONSE_TASK}
Write the reply to the customer. Rules:
- {chr(10).join('- ' + r for r in rules)[2:]}{extra}

Data (JSON between the markers):
{DATA_START}
{orjson.dumps(data, default=str).decode()}
{DATA_END}

Reply with the message text only."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def extract_data(prompt: str) -> dict[str, Any] | None:
    """The JSON between the data markers of a prompt (what the local model reads)."""
    start = prompt.find(DATA_START)
    end = prompt.find(DATA_END, start + 1)
    if start < 0 or end < 0:
        return None
    try:
        value = orjson.loads(prompt[start + len(DATA_START):end].strip())
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
