"""What a step handler is to the engine: an `Actor` with a name and one async handler, the `StepResult` it
returns, and the narrow `StepContext` it may use while it runs. Everything else (NATS, saga log, retries,
tracing, metrics) is the runtime's job (`saga.runtime`).

- A *processor* returns its enrichment: a dict of payload fields it adds.
- A *router* returns a `StepResult` that may also replace the remaining steps of the route.
- Raise `RetryableError` (or let a timeout / connection error / 5xx escape) for transient failures and
  `PermanentError` for failures that a retry cannot fix.
- A step may suspend its saga until a named signal arrives or a deadline passes: return
  `StepResult(wait=Wait(signal, timeout_s, data))`. The step is run again when the wait ends, with
  `ctx.wakeup` set (`Wakeup`: a signal and its payload, or the timer); it then completes as usual or waits
  again. Signals are sent with `saga.signals.send_signal`; the mechanism is described in `saga.waits`.
- An actor may implement `on_saga_failed`: the runtime of its process calls it when it fails a saga for good
  (the error handler's does: its own failures, dead letters, the sweeper), e.g. to hand the saga to a person.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from saga.log import SagaEvent
from saga.protocol import Message, SagaOutcome


# A signal's name: it is part of subjects, keys and metric labels.
SIGNAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def check_signal(signal: str) -> str:
    """The signal name, or ValueError when it is not `[a-z][a-z0-9_]{0,31}`."""
    if not isinstance(signal, str) or not SIGNAL_NAME.match(signal):
        raise ValueError(f"invalid signal name {signal!r}: expected [a-z][a-z0-9_]{{0,31}}")
    return signal


@dataclass(frozen=True)
class Wait:
    """Suspend the saga at this step until `signal` arrives or `timeout_s` passes (a durable timer); `data`
    (JSON) says what is pending and is recorded in `wait_started`."""

    signal: str
    timeout_s: float
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_signal(self.signal)
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ValueError(f"Wait.timeout_s must be a finite number > 0, not {self.timeout_s!r}")
        if not isinstance(self.data, dict):
            raise ValueError("Wait.data must be a dict")


@dataclass(frozen=True)
class Wakeup:
    """Why a waiting step runs again (`StepContext.wakeup`)."""

    kind: Literal["signal", "timer"]
    signal: str  # the awaited signal's name
    payload: dict[str, Any]  # the signal's payload ({} for a timer)
    waited_s: float
    wait_data: dict[str, Any]  # `Wait.data` of the wait that ended


@dataclass
class StepResult:
    """What a handler returns. Processors may return a plain dict (the enrichment) instead."""

    enrichment: dict[str, Any] = field(default_factory=dict)
    # Routers only: the new steps after the current one (taken steps are never rewritten).
    remaining_route: list[str] | None = None
    # Sticky saga outcome, e.g. "failed"; the saga ends in this state when the route finishes.
    outcome: SagaOutcome | None = None
    # Why the route changed (recorded in the `route_changed` event).
    reason: str = ""
    # Suspend the saga here until a signal or the timer; the step runs again then (`StepContext.wakeup`).
    # A waiting result completes nothing: its enrichment, route change and outcome must be empty (else the
    # step fails with a PermanentError); return them from the run that ends the wait.
    wait: Wait | None = None


class StepContext(Protocol):
    """What a handler may use while it runs one step: its saga's history and records, its final result,
    the delivery's heartbeat and the reply subject; never the raw stores."""

    actor: str
    attempt: int
    settings: Any
    log: logging.LoggerAdapter[logging.Logger]
    # None on a normal delivery; set when the step runs again because its wait ended.
    wakeup: Wakeup | None

    @property
    def trace_id(self) -> str | None:
        """The trace id of the message being handled."""
        ...

    async def history(self) -> list[SagaEvent]:
        """Every event of this saga so far, in the order they were written."""
        ...

    async def record(self, kind: str, data: dict[str, Any], *, seq: int = 0) -> bool:
        """Write a saga event for this step (e.g. `action_executed`); False if it was already there."""
        ...

    async def stored_result(self) -> Any | None:
        """This saga's final result, when one was stored already."""
        ...

    async def save_result(self, result: Any, *, provisional: bool = False) -> bool:
        """Store this saga's final result once (False when one was stored already); with `provisional`, an
        answer given before the saga waits for a signal, shown until the final result replaces it."""
        ...

    async def in_progress(self) -> None:
        """Tell JetStream the step is still alive (the runtime also does this on a timer)."""
        ...

    async def publish_reply(self, subject: str, data: bytes) -> None:
        """Publish on core NATS (the reply subject of whoever waits for the answer)."""
        ...


@dataclass(frozen=True)
class FailureContext:
    """What `Actor.on_saga_failed` is told about the saga the runtime is failing."""

    actor: str  # the actor whose step could not go on
    detail: str  # why the saga failed
    settings: Any
    log: logging.LoggerAdapter[logging.Logger]


class Actor:
    """Base class of every actor. Subclasses set `name` and implement `handle`."""

    name: ClassVar[str]
    kind: ClassVar[Literal["processor", "router"]] = "processor"
    # Seconds JetStream waits for an ack before redelivering (default: settings.ack_wait_s). Rarely needed:
    # the runtime sends in_progress heartbeats while a step runs, so long steps do not need a long ack wait.
    ack_wait_s: ClassVar[float | None] = None
    max_attempts: ClassVar[int | None] = None

    async def start(self, settings: Any) -> None:
        """Open clients (HTTP, databases, models) once per process."""

    async def stop(self) -> None:
        """Close what `start` opened."""

    async def handle(self, message: Any, ctx: StepContext) -> StepResult | dict[str, Any] | None:
        """Process one message; return the enrichment (processors) or a StepResult (routers)."""
        raise NotImplementedError

    async def on_saga_failed(self, message: Any, history: list[SagaEvent], ctx: FailureContext) -> str | None:
        """Called by this process's runtime when it fails a saga for good, before the answer is given.
        Return the id of the handoff ticket opened for it (idempotently: the runtime may fail the same saga
        twice), or None when none was opened; exceptions count as None. The default opens nothing, and the
        answer then says the message was recorded rather than that a person has it."""
        return None


__all__ = ["Actor", "FailureContext", "Message", "StepContext", "StepResult", "Wait", "Wakeup", "check_signal"]
