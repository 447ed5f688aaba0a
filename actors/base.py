"""What an actor is: a name and one async handler. Everything else (NATS, saga log, retries, tracing,
metrics) is the runtime's job (`actors.runtime`), so actor modules hold only their own logic.

- A *processor* returns its enrichment: a dict of `MessagePayload` fields it adds.
- A *router* returns a `StepResult` that may also replace the remaining steps of the route.
- Raise `RetryableError` (or let a timeout / connection error / 5xx escape) for transient failures and
  `PermanentError` for failures that a retry cannot fix.
- An actor may implement `on_saga_failed`: the runtime of its process calls it when it fails a saga for good
  (the error handler's does: its own failures, dead letters, the sweeper), e.g. to hand the customer to a human.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from saga.protocol import Message, SagaOutcome

if TYPE_CHECKING:
    from config.settings import Settings
    from saga.log import SagaEvent, SagaLog
    from saga.results import ResultStore


class RetryableError(Exception):
    """A transient failure: the runtime retries the step with backoff."""


class PermanentError(Exception):
    """A failure no retry can fix: the message goes to the route's error handler at once."""


@dataclass
class StepResult:
    """What a handler returns. Processors may return a plain dict (the enrichment) instead."""

    enrichment: dict[str, Any] = field(default_factory=dict)
    # Routers only: the new steps after the current one (taken steps are never rewritten).
    remaining_route: list[str] | None = None
    # Sticky saga outcome, e.g. "escalated"; the saga ends in this state when the route finishes.
    outcome: SagaOutcome | None = None
    # Why the route changed (recorded in the `route_changed` event).
    reason: str = ""


class StepContext(Protocol):
    """What a handler may use from the runtime while it runs one step."""

    actor: str
    attempt: int
    settings: Settings
    saga: SagaLog
    results: ResultStore
    log: logging.LoggerAdapter

    @property
    def trace_id(self) -> str | None: ...

    async def record(self, kind: str, data: dict[str, Any], *, seq: int = 0) -> bool:
        """Write a saga event for this step (e.g. `action_executed`); False if it was already there."""
        ...

    async def in_progress(self) -> None:
        """Tell JetStream the step is still alive (the runtime also does this on a timer)."""
        ...

    async def publish_reply(self, subject: str, data: bytes) -> None:
        """Publish on core NATS (the gateway's reply subject)."""
        ...


@dataclass(frozen=True)
class FailureContext:
    """What `Actor.on_saga_failed` is told about the saga the runtime is failing."""

    actor: str  # the actor whose step could not go on
    detail: str  # why the saga failed
    settings: Settings
    log: logging.LoggerAdapter


class Actor:
    """Base class of every actor. Subclasses set `name` and implement `handle`."""

    name: ClassVar[str]
    kind: ClassVar[Literal["processor", "router"]] = "processor"
    # Seconds JetStream waits for an ack before redelivering (default: settings.ack_wait_s). Rarely needed:
    # the runtime sends in_progress heartbeats while a step runs, so long steps do not need a long ack wait.
    ack_wait_s: ClassVar[float | None] = None
    max_attempts: ClassVar[int | None] = None
    # The route's error handler sets this: its runtime also consumes JetStream's dead-letter advisories
    # (messages whose deliveries ran out because their process kept dying, and terminated poison messages).
    handles_dead_letters: ClassVar[bool] = False
    # Its runtime also sweeps for stalled sagas (no event for a while) and resumes them from the saga log.
    sweeps_stalled_sagas: ClassVar[bool] = False

    async def start(self, settings: Settings) -> None:
        """Open clients (HTTP, Redis, SQLite, LLM) once per process."""

    async def stop(self) -> None:
        """Close what `start` opened."""

    async def handle(self, message: Message, ctx: StepContext) -> StepResult | dict[str, Any] | None:
        """Process one message; return the enrichment (processors) or a StepResult (routers)."""
        raise NotImplementedError

    async def on_saga_failed(self, message: Message, history: list[SagaEvent], ctx: FailureContext) -> str | None:
        """Called by this process's runtime when it fails a saga for good, before the customer is answered.
        Return the id of the handoff ticket opened for it (idempotently: the runtime may fail the same saga
        twice), or None when none was opened; exceptions count as None. The default opens nothing, and the
        answer then says the message was recorded for the support team rather than that a colleague has it."""
        return None
