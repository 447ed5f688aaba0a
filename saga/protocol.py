"""The message protocol: what travels between actors on `ecommerce.support.<actor>`.

A `Message` carries its own `Route` (choreography: no orchestrator) and a `MessagePayload` that every
processor enriches with one field of its own. The models are strict pydantic v2 models: unknown fields and
wrong types are refused, so a malformed message is detected at the edge of every actor (and terminated as
poison) instead of failing somewhere deep inside a handler.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SUBJECT_PREFIX = "ecommerce.support"
ERROR_HANDLER = "escalation_router"
# The last step of every route: it writes the history, the session and the result, and answers the customer.
ANSWERING_ACTOR = "response_aggregator"
# The longest route a message may carry (routers that keep inserting steps hit it and fail the step).
MAX_STEPS = 64

HAPPY_PATH: tuple[str, ...] = (
    "sentiment_analyzer",
    "intent_analyzer",
    "context_retriever",
    "decision_router",
    "response_generator",
    "guardrail_validator",
    "response_aggregator",
)
WITH_ACTION: tuple[str, ...] = HAPPY_PATH[:-1] + ("execution_coordinator", "response_aggregator")
ESCALATION: tuple[str, ...] = ("escalation_router", "response_aggregator")

ACTOR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Message ids become KV keys and Nats-Msg-Id values: keep them to a safe alphabet.
MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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


def new_message_id() -> str:
    """A fresh, KV-key-safe message id."""
    return uuid.uuid4().hex


class RouteError(ValueError):
    """A route change that would rewrite steps already taken, or an invalid route."""


def _check_actor_name(name: str) -> str:
    if not ACTOR_NAME.match(name):
        raise ValueError(f"invalid actor name in route: {name!r}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class Route(_Strict):
    """The steps of a message and where it is. `steps[:current_step]` are taken and never rewritten."""

    steps: list[str] = Field(min_length=1, max_length=MAX_STEPS)
    current_step: int = Field(default=0, ge=0)
    error_handler: str = ERROR_HANDLER

    @field_validator("steps")
    @classmethod
    def _names(cls, steps: list[str]) -> list[str]:
        for name in steps:
            _check_actor_name(name)
        return steps

    @field_validator("error_handler")
    @classmethod
    def _handler_name(cls, name: str) -> str:
        # It becomes a publish subject (`ecommerce.support.<handler>`): no dots, spaces or wildcards.
        return _check_actor_name(name)

    @property
    def current(self) -> str:
        """The actor whose turn it is."""
        if self.current_step >= len(self.steps):
            raise RouteError(f"route finished: step {self.current_step} of {len(self.steps)}")
        return self.steps[self.current_step]

    @property
    def remaining(self) -> list[str]:
        """The steps after the current one."""
        return self.steps[self.current_step + 1 :]

    @property
    def is_last(self) -> bool:
        """True when the current step is the last one of the route."""
        return self.current_step >= len(self.steps) - 1

    def advanced(self) -> Route:
        """The route moved on by one step (a copy; `current_step` may then equal `len(steps)`)."""
        return self.model_copy(update={"current_step": self.current_step + 1})

    def with_remaining(self, steps: list[str] | tuple[str, ...]) -> Route:
        """Replace every step after the current one. Taken steps and the current one stay as they are.

        Raises RouteError (never a pydantic ValidationError) when the new route is invalid: longer than
        MAX_STEPS, or naming something that is not an actor."""
        new = list(self.steps[: self.current_step + 1]) + list(steps)
        if len(new) > MAX_STEPS:
            raise RouteError(f"route of {len(new)} steps is longer than the limit of {MAX_STEPS}")
        try:
            return Route(steps=new, current_step=self.current_step, error_handler=self.error_handler)
        except ValidationError as exc:
            raise RouteError(f"invalid route {new!r}: {exc.errors()[0]['msg']}") from None

    def inserted_after_current(self, *steps: str) -> Route:
        """Insert steps right after the current one, keeping the rest of the route."""
        return self.with_remaining([*steps, *self.remaining])

    def check_rewrite(self, new: Route) -> None:
        """Raise RouteError unless `new` keeps every step taken so far (and the current one) unchanged."""
        keep = self.current_step + 1
        if new.current_step != self.current_step or new.steps[:keep] != self.steps[:keep]:
            raise RouteError(
                f"route rewrite changes steps already taken: {self.steps[:keep]} -> {new.steps[:keep]}"
            )


# ---- enrichments: one field per processor ------------------------------------------------------

SentimentLabel = Literal["POSITIVE", "NEUTRAL", "NEGATIVE"]
Urgency = Literal["low", "medium", "high", "critical"]


class Sentiment(_Strict):
    """Added by sentiment_analyzer."""

    label: SentimentLabel
    score: float = Field(ge=-1.0, le=1.0)
    confidence: float = Field(ge=0.0, le=1.0)
    urgency: Urgency
    critical_keywords: list[str] = Field(default_factory=list)
    method: str = "vader"


class Entities(_Strict):
    """What the intent analyzer found in the customer's words."""

    order_number: str | None = None
    tracking_number: str | None = None
    product: str | None = None
    amount: float | None = Field(default=None, allow_inf_nan=False)


class Intent(_Strict):
    """Added by intent_analyzer."""

    name: str
    confidence: float = Field(ge=0.0, le=1.0)
    entities: Entities = Field(default_factory=Entities)
    model: str = ""
    reasked: bool = False


class CustomerContext(_Strict):
    """Added by context_retriever: only data that belongs to the customer who wrote."""

    customer: dict[str, Any] | None = None
    orders: list[dict[str, Any]] = Field(default_factory=list)
    order: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)


ActionKind = Literal["none", "refund", "replacement", "cancel"]


class ActionPlan(_Strict):
    """Added by decision_router: what the agent may do, within policy."""

    action: ActionKind = "none"
    order_id: str | None = None
    amount: float | None = Field(default=None, allow_inf_nan=False)
    reason: str = ""
    approved: bool = False
    policy_notes: list[str] = Field(default_factory=list)


class AgentResponse(_Strict):
    """Added by response_generator (and by escalation_router for holding replies)."""

    text: str
    model: str = ""
    fallback_used: bool = False
    regeneration: int = 0


class GuardrailCheck(_Strict):
    """Added by guardrail_validator."""

    passed: bool
    violations: list[str] = Field(default_factory=list)
    attempts: int = 1


class ExecutedAction(_Strict):
    """One side effect performed through the mock APIs, and the handle to undo it."""

    action: ActionKind
    order_id: str
    action_id: str
    idempotency_key: str
    status: str = "active"
    amount: float | None = None


class ExecutionResult(_Strict):
    """Added by execution_coordinator."""

    success: bool
    actions: list[ExecutedAction] = Field(default_factory=list)
    detail: str = ""


class ErrorInfo(_Strict):
    """Set by the runtime when a step fails for good and the message goes to the error handler."""

    actor: str
    step_index: int
    kind: str  # "retryable_exhausted" | "permanent" | "misrouted" | "poison" | "dead_letter" | ...
    detail: str
    attempts: int = 1
    failed_route: list[str] = Field(default_factory=list)


class MessagePayload(_Strict):
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


SagaOutcome = Literal["running", "resolved", "escalated", "failed"]


class MessageMetadata(_Strict):
    """Bookkeeping that travels with the message (trace context travels in NATS headers instead)."""

    created_at: float = Field(default_factory=time.time)
    deadline_at: float | None = None
    reply_subject: str | None = None
    trace_id: str | None = None
    outcome: SagaOutcome = "running"
    redeliveries: int = 0
    regenerations: int = 0
    tags: dict[str, str] = Field(default_factory=dict)
    # Set by the gateway only (never from a request body): True when `payload.customer_email` is the `sub` of a
    # verified token. False is a guest: `customer_email` is only a claim, no action is ever taken, and only an
    # order proven by its number and its email is read (actors/context_retriever.py).
    customer_verified: bool = False


class Message(_Strict):
    """The unit of work of the mesh."""

    message_id: str = Field(default_factory=new_message_id)
    session_id: str
    route: Route
    payload: MessagePayload
    metadata: MessageMetadata = Field(default_factory=MessageMetadata)

    @field_validator("message_id")
    @classmethod
    def _message_id(cls, v: str) -> str:
        if not MESSAGE_ID.match(v):
            raise ValueError("message_id must be 1-64 characters of [A-Za-z0-9_-]")
        return v

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, v: str) -> str:
        if not SESSION_ID.match(v):
            raise ValueError("session_id must be 1-64 characters of [A-Za-z0-9_-]")
        return v

    @property
    def step_index(self) -> int:
        """Index of the current step in the route."""
        return self.route.current_step

    @property
    def owner(self) -> str:
        """Who may read this saga: the verified customer, else the guest holding its session id."""
        return customer_owner(self.payload.customer_email) if self.metadata.customer_verified else GUEST_OWNER

    def to_bytes(self) -> bytes:
        """Serialize for the wire (orjson: several times cheaper than the standard json per hop)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_defaults=False))

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        """Parse and validate a message from the wire, strictly (a number sent as a string is refused);
        raises pydantic.ValidationError (a ValueError) on bad JSON or a bad message."""
        return cls.model_validate_json(data, strict=True)

    def enriched(self, fields: dict[str, Any]) -> Message:
        """A copy with payload fields added or replaced (validated as payload fields)."""
        if not fields:
            return self
        merged = self.payload.model_dump(mode="json")
        merged.update(_jsonable(fields))
        payload = MessagePayload.model_validate(merged, strict=True)
        if payload.customer_message != self.payload.customer_message or (
            payload.customer_email != self.payload.customer_email
        ):
            raise ValueError("the customer's input is never changed by an enrichment")
        return self.model_copy(update={"payload": payload})


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        out[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


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
        route=Route(steps=list(steps)),
        payload=MessagePayload(customer_message=customer_message, customer_email=customer_email),
        metadata=MessageMetadata(
            created_at=now,
            deadline_at=(now + deadline_s) if deadline_s else None,
            reply_subject=reply_subject,
            customer_verified=customer_verified,
        ),
    )
