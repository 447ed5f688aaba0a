"""guardrail_validator: the specification's patterns, plus no data of other customers, no order numbers or
amounts absent from the context, and no promise beyond the action plan. A rejected draft goes back to the
response generator (at most twice), then to a human."""

from __future__ import annotations

import re
from typing import Any

from actors.base import Actor, StepContext, StepResult
from actors.domain import GuardrailCheck, Message
from actors.registry import ESCALATION, route

MAX_REGENERATIONS = 2
PROMISES = [
    (re.compile(r"guarantee.*refund", re.I | re.S), "guarantees a refund"),
    (re.compile(r"will definitely.*\$\d+", re.I | re.S), "promises a payment"),
    (re.compile(r"promise.*free", re.I | re.S), "promises something for free"),
    (re.compile(r"can cancel.*immediately", re.I | re.S), "promises an immediate cancellation"),
]
PII = [
    (re.compile(r"\b\d{4}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b"), "contains a card number"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "contains a social security number"),
]
# An address starts where a run of local-part characters starts (the lookbehind), else every position of a long
# run like "1.1.1.1..." rescans the rest of it: quadratic.
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# As entities.ORDER_NUMBER: the optional `#` owns the spaces before it, else "order" + spaces backtracks.
ORDER_REF = re.compile(r"(?:order(?:\s*+#)?\s*+|#)(\d{4,10})\b|\b(\d{5})\b", re.I)
NUMBER = re.compile(r"\d+(?:\.\d+)?")
MONEY = re.compile(r"\$\s?(\d{1,7}(?:,\d{3})*(?:\.\d{1,2})?)")
# A claim is a verb and its object in one sentence. The gap stops at the next verb (a match from there is the
# same claim), else "issued issued issued ..." rescans the rest of the sentence from every verb: quadratic.
_REFUND_VERB = r"\b(?:issued|processed|sent|approved)\b"
_REPLACEMENT_VERB = r"\b(?:arranged|sent|shipped)\b"
CLAIMS = {
    "refund": re.compile(rf"{_REFUND_VERB}(?:(?!{_REFUND_VERB})[^.])*\brefund\b|\brefund(?:ed)? of \$", re.I),
    "cancel": re.compile(r"\b(?:i've|i have|we've|we have)\s+cancell?ed\b", re.I),
    "replacement": re.compile(rf"{_REPLACEMENT_VERB}(?:(?!{_REPLACEMENT_VERB})[^.])*\breplacement\b", re.I),
}


def _numbers_in(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _numbers_in(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers_in(v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.add(f"{float(value):.2f}")
    elif isinstance(value, str):
        out.update(NUMBER.findall(value))


def check(message: Message) -> list[str]:
    """The policy violations of the drafted reply (empty when it may be sent)."""
    p = message.payload
    text = p.response.text if p.response else ""
    violations = [why for pattern, why in PROMISES + PII if pattern.search(text)]
    for email in EMAIL.findall(text):
        if email.lower() != p.customer_email.lower():
            violations.append("mentions another person's email address")
            break
    known: set[str] = set()
    _numbers_in(p.context.model_dump() if p.context else {}, known)
    _numbers_in(p.action_plan.model_dump() if p.action_plan else {}, known)
    _numbers_in(p.customer_message, known)
    for m in ORDER_REF.finditer(text):
        number = m.group(1) or m.group(2)
        if number not in known:
            violations.append(f"mentions order {number}, which is not in the customer's context")
    for m in MONEY.finditer(text):
        value = f"{float(m.group(1).replace(',', '')):.2f}"
        if value not in known and m.group(1) not in known:
            violations.append(f"mentions the amount ${m.group(1)}, which is not in the context or plan")
    plan = p.action_plan
    for action, claim in CLAIMS.items():
        if claim.search(text) and not (plan and plan.approved and plan.action == action):
            violations.append(f"claims a {action} the action plan did not approve")
        elif claim.search(text) and plan and plan.requires:
            violations.append(f"claims a {action} that waits for the {plan.requires} of a person")
    return violations


class GuardrailValidator(Actor):
    """Adds `payload.guardrail_check`; sends a rejected draft back, or to a human."""

    name = "guardrail_validator"
    kind = "router"

    async def handle(self, message: Message, ctx: StepContext) -> StepResult:
        violations = check(message)
        drafts = message.route.steps[: message.route.current_step].count("response_generator")
        if not violations:
            return StepResult(enrichment={"guardrail_check": GuardrailCheck(passed=True, attempts=drafts)})
        result = GuardrailCheck(passed=False, violations=violations, attempts=drafts)
        if drafts <= MAX_REGENERATIONS:
            return StepResult(enrichment={"guardrail_check": result},
                              remaining_route=["response_generator", "guardrail_validator", *message.route.remaining],
                              reason="guardrail_regenerate")
        return StepResult(enrichment={"guardrail_check": result},
                          remaining_route=list(route(ESCALATION)), reason="guardrail_failed")


ACTOR = GuardrailValidator
