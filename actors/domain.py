"""The support domain's message: the customer's words, one enrichment per processor, and the routes.

`Message` is the engine's envelope (`saga.protocol.Message`) over `MessagePayload`, on the subjects
`ecommerce.support.<actor>`; `SupportMetadata` adds who the customer is (verified or a guest).
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any, Literal

from pydantic import Field, field_validator

from actors import registry
from saga.protocol import ErrorInfo, MessageMetadata, Route, Strict, new_message_id
from saga.protocol import Message as Envelope

SUBJECT_PREFIX = "ecommerce.support"

# The routes of the built-in registry (actors/registry.py, where each actor's line says which routes it is on).
HAPPY_PATH: tuple[str, ...] = registry.route(registry.CHAT, actors=registry.ACTORS)
WITH_ACTION: tuple[str, ...] = registry.route(registry.ACTION, actors=registry.ACTORS)
ESCALATION: tuple[str, ...] = registry.route(registry.ESCALATION, actors=registry.ACTORS)
# The error handler begins the escalation route; the answering actor ends every route: it writes the history,
# the session and the result, and answers the customer.
ERROR_HANDLER = ESCALATION[0]
ANSWERING_ACTOR = HAPPY_PATH[-1]

# An email becomes a URL path segment of the commerce APIs: none of the characters that end or escape one.
EMAIL_FORBIDDEN = frozenset("/?#%\\")
# Tab and line breaks are text; ZWJ/ZWNJ join emoji and letters of several scripts. Every other Cc/Cf
# character (C0/C1 controls, bidi overrides and isolates U+202A-U+202E, U+2066-U+2069, ...) is refused.
TEXT_CONTROLS_ALLOWED = frozenset("\t\n\r\u200c\u200d")


def email_problem(value: str) -> str | None:
    """Why a customer email may not be used (None when it may)."""
    for ch in value:
        if ch in EMAIL_FORBIDDEN or unicodedata.category(ch) in ("Cc", "Cf"):
            return f"customer_email must not contain {ch!r} (no / ? # % \\ or control characters)"
    return None


def refused_if(problem: str | None, value: str) -> str:
    """The value, or a ValueError (what a pydantic validator raises) with the problem."""
    if problem:
        raise ValueError(problem)
    return value


def text_problem(value: str) -> str | None:
    """Why a customer message may not be used: control or bidi-override characters (None when it may)."""
    for i, ch in enumerate(value):
        if ch not in TEXT_CONTROLS_ALLOWED and unicodedata.category(ch) in ("Cc", "Cf"):
            return f"message contains the control character U+{ord(ch):04X} at position {i}"
    return None


# The owner of what a guest (a caller without a verified identity) starts; a customer's is `customer:<email>`.
GUEST_OWNER = "guest"
# The payload's email of a guest who gave none (a reserved domain: it never names a customer).
GUEST_EMAIL = "guest@guest.invalid"


def customer_owner(email: str) -> str:
    """The owner of what a verified customer starts."""
    return f"customer:{email.lower()}"


def subject_for(actor: str) -> str:
    """The JetStream subject an actor consumes from."""
    return f"{SUBJECT_PREFIX}.{actor}"


# ---- enrichments: one field per processor ------------------------------------------------------

SentimentLabel = Literal["POSITIVE", "NEUTRAL", "NEGATIVE"]
Urgency = Literal["low", "medium", "high", "critical"]


class Sentiment(Strict):
    """Added by sentiment_analyzer."""

    label: SentimentLabel
    score: float = Field(ge=-1.0, le=1.0)
    confidence: float = Field(ge=0.0, le=1.0)
    urgency: Urgency
    critical_keywords: list[str] = Field(default_factory=list)
    method: str = "vader"


class Entities(Strict):
    """What the intent analyzer found in the customer's words."""

    order_number: str | None = None
    tracking_number: str | None = None
    product: str | None = None
    amount: float | None = Field(default=None, allow_inf_nan=False)


class Intent(Strict):
    """Added by intent_analyzer."""

    name: str
    confidence: float = Field(ge=0.0, le=1.0)
    entities: Entities = Field(default_factory=Entities)
    model: str = ""
    reasked: bool = False


class CustomerContext(Strict):
    """Added by context_retriever: only data that belongs to the customer who wrote."""

    customer: dict[str, Any] | None = None
    orders: list[dict[str, Any]] = Field(default_factory=list)
    order: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)


ActionKind = Literal["none", "refund", "replacement", "cancel"]


class ActionPlan(Strict):
    """Added by decision_router: what the agent may do, within policy."""

    action: ActionKind = "none"
    order_id: str | None = None
    amount: float | None = Field(default=None, allow_inf_nan=False)
    reason: str = ""
    approved: bool = False
    policy_notes: list[str] = Field(default_factory=list)
    # Who must say yes before the action happens: the customer ("confirmation", for every approved plan while
    # SUPPORTMESH_CONFIRM_ACTIONS is on) or a colleague ("approval", for a plan over what the agent may do alone).
    # The execution coordinator waits for that signal; nothing is executed before it.
    requires: Literal["confirmation", "approval"] | None = None


class AgentResponse(Strict):
    """Added by response_generator (and by escalation_router for holding replies)."""

    text: str
    model: str = ""
    fallback_used: bool = False
    regeneration: int = 0


class GuardrailCheck(Strict):
    """Added by guardrail_validator."""

    passed: bool
    violations: list[str] = Field(default_factory=list)
    attempts: int = 1


class ExecutedAction(Strict):
    """One side effect performed through the mock APIs, and the handle to undo it."""

    action: ActionKind
    order_id: str
    action_id: str
    idempotency_key: str
    status: str = "active"
    amount: float | None = None


class ExecutionResult(Strict):
    """Added by execution_coordinator."""

    success: bool
    actions: list[ExecutedAction] = Field(default_factory=list)
    detail: str = ""


DecisionOutcome = Literal["yes", "no", "other", "approved", "denied", "timeout"]


class PersonDecision(Strict):
    """Added by execution_coordinator when the wait for a person ended: what they decided (or that nobody did)."""

    kind: Literal["confirmation", "approval"]
    outcome: DecisionOutcome
    # The customer's reply that decided (its own message id, its text), for the history.
    reply_message_id: str | None = Field(default=None, max_length=64)
    reply_text: str | None = Field(default=None, max_length=4000)
    # The colleague who decided, and their note to the customer (a denial's reason).
    agent: str | None = Field(default=None, max_length=254)
    note: str | None = Field(default=None, max_length=2000)
    waited_s: float = 0.0


class MessagePayload(Strict):
    """The customer's input (never changed) and one enrichment per processor (added once)."""

    customer_message: str = Field(min_length=1, max_length=4000)
    customer_email: str = Field(min_length=3, max_length=254)
    sentiment: Sentiment | None = None
    intent: Intent | None = None
    context: CustomerContext | None = None
    api_data: dict[str, Any] = Field(default_factory=dict)
    action_plan: ActionPlan | None = None
    response: AgentResponse | None = None
    guardrail_check: GuardrailCheck | None = None
    execution_result: ExecutionResult | None = None
    decision: PersonDecision | None = None
    error: ErrorInfo | None = None
    recovery_log: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("customer_email")
    @classmethod
    def _email(cls, v: str) -> str:
        return refused_if(email_problem(v), v)

    @field_validator("customer_message")
    @classmethod
    def _text(cls, v: str) -> str:
        return refused_if(text_problem(v), v)


class SupportMetadata(MessageMetadata):
    """The engine's bookkeeping, plus who the customer is."""

    # Set by the gateway only (never from a request body): True when `payload.customer_email` is the `sub` of a
    # verified token. False is a guest: `customer_email` is only a claim, no action is ever taken, and only an
    # order proven by its number and its email is read (actors/context_retriever.py).
    customer_verified: bool = False


class Message(Envelope[MessagePayload]):
    """The unit of work of the support mesh."""

    subject_prefix = SUBJECT_PREFIX

    metadata: SupportMetadata = Field(default_factory=SupportMetadata)

    @property
    def owner(self) -> str:
        """Who may read this saga: the verified customer, else the guest holding its session id."""
        return customer_owner(self.payload.customer_email) if self.metadata.customer_verified else GUEST_OWNER

    def check_enrichment(self, payload: MessagePayload) -> None:
        """The customer's input is never changed by an enrichment."""
        if payload.customer_message != self.payload.customer_message or (
            payload.customer_email != self.payload.customer_email
        ):
            raise ValueError("the customer's input is never changed by an enrichment")


def new_message(
    *,
    session_id: str,
    customer_email: str,
    customer_message: str,
    steps: tuple[str, ...] | list[str] = HAPPY_PATH,
    reply_subject: str | None = None,
    deadline_s: float | None = None,
    message_id: str | None = None,
    customer_verified: bool = False,
) -> Message:
    """Build the first message of a saga, as the gateway does."""
    now = time.time()
    return Message(
        message_id=message_id or new_message_id(),
        session_id=session_id,
        route=Route(steps=list(steps), error_handler=ERROR_HANDLER),
        payload=MessagePayload(customer_message=customer_message, customer_email=customer_email),
        metadata=SupportMetadata(
            created_at=now,
            deadline_at=(now + deadline_s) if deadline_s else None,
            reply_subject=reply_subject,
            customer_verified=customer_verified,
        ),
    )
