"""The envelope: what travels between the steps of a saga on `<prefix>.<actor>`.

A `Message` carries its own `Route` (choreography: no orchestrator) and the application's payload, which every
step enriches with fields of its own. The application names its payload model by subclassing
`Message[ItsPayload]` (and sets `subject_prefix` there). The models are strict pydantic v2 models: unknown
fields and wrong types are refused, so a malformed message is detected at the edge of every step (and
terminated as poison) instead of failing somewhere deep inside a handler.

The engine needs one field of the payload: `error: ErrorInfo | None`, which it sets when a step fails for good
and the message goes to the route's error handler.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The longest route a message may carry (routers that keep inserting steps hit it and fail the step).
MAX_STEPS = 64

ACTOR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Message ids become KV keys and Nats-Msg-Id values: keep them to a safe alphabet.
MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_message_id() -> str:
    """A fresh, KV-key-safe message id."""
    return uuid.uuid4().hex


class RouteError(ValueError):
    """A route change that would rewrite steps already taken, or an invalid route."""


def _check_actor_name(name: str) -> str:
    if not ACTOR_NAME.match(name):
        raise ValueError(f"invalid actor name in route: {name!r}")
    return name


class Strict(BaseModel):
    """Base of the wire models: unknown fields and wrong types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class Route(Strict):
    """The steps of a message and where it is. `steps[:current_step]` are taken and never rewritten."""

    steps: list[str] = Field(min_length=1, max_length=MAX_STEPS)
    current_step: int = Field(default=0, ge=0)
    error_handler: str

    @field_validator("steps")
    @classmethod
    def _names(cls, steps: list[str]) -> list[str]:
        for name in steps:
            _check_actor_name(name)
        return steps

    @field_validator("error_handler")
    @classmethod
    def _handler_name(cls, name: str) -> str:
        # It becomes a publish subject (`<prefix>.<handler>`): no dots, spaces or wildcards.
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


class ErrorInfo(Strict):
    """Set by the runtime (as `payload.error`) when a step fails for good and the message goes to the error
    handler."""

    actor: str
    step_index: int
    kind: str  # "retryable_exhausted" | "permanent" | "misrouted" | "poison" | "dead_letter" | ...
    detail: str
    attempts: int = 1
    failed_route: list[str] = Field(default_factory=list)


# `escalated`: the saga was handed over to people (a persisted value: saga_state and the saga log use it).
SagaOutcome = Literal["running", "resolved", "escalated", "failed"]


class MessageMetadata(Strict):
    """Bookkeeping that travels with the message (trace context travels in NATS headers instead)."""

    created_at: float = Field(default_factory=time.time)
    deadline_at: float | None = None
    reply_subject: str | None = None
    trace_id: str | None = None
    outcome: SagaOutcome = "running"
    redeliveries: int = 0
    regenerations: int = 0
    tags: dict[str, str] = Field(default_factory=dict)


P = TypeVar("P", bound=BaseModel)


class Message(Strict, Generic[P]):
    """The unit of work of the mesh. Applications subclass `Message[TheirPayload]` and set `subject_prefix`."""

    subject_prefix: ClassVar[str] = "saga"

    message_id: str = Field(default_factory=new_message_id)
    session_id: str
    route: Route
    payload: P
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

    @classmethod
    def subject_for(cls, actor: str) -> str:
        """The JetStream subject an actor consumes from."""
        return f"{cls.subject_prefix}.{actor}"

    @property
    def step_index(self) -> int:
        """Index of the current step in the route."""
        return self.route.current_step

    @property
    def owner(self) -> str | None:
        """Who may read the saga, kept in its state (applications override this; None: not recorded)."""
        return None

    def to_bytes(self) -> bytes:
        """Serialize for the wire (orjson: several times cheaper than the standard json per hop)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_defaults=False))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse and validate a message from the wire, strictly (a number sent as a string is refused);
        raises pydantic.ValidationError (a ValueError) on bad JSON or a bad message."""
        return cls.model_validate_json(data, strict=True)

    def enriched(self, fields: dict[str, Any]) -> Self:
        """A copy with payload fields added or replaced, each validated as that payload field (an unknown
        field or a wrong type raises ValueError)."""
        if not fields:
            return self
        # Only what changed is validated: each assignment to the copy is checked (validate_assignment), and
        # the fields already in the message were validated when it arrived. About a third of the cost of
        # dumping and validating the whole payload again once the context is in it.
        payload = self.payload.model_copy()
        for name, value in fields.items():
            setattr(payload, name, value.model_dump(mode="json") if isinstance(value, BaseModel) else value)
        self.check_enrichment(payload)
        return self.model_copy(update={"payload": payload})

    def check_enrichment(self, payload: P) -> None:
        """Raise ValueError when an enrichment changes what must not change (the application's rule)."""

