"""What every part of the runtime shares: the connection, the stores, the application, the hooks, and the
three writes they all make (record an event of a step, publish a hop, finish a saga)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from saga import transport
from saga.actor import Actor
from saga.app import SagaApp
from saga.hooks import StepHooks
from saga.log import TERMINAL, SagaEvent, SagaLog
from saga.protocol import Message
from saga.results import ResultStore
from saga.retry import RetryPolicy

log = logging.getLogger("saga.runtime")


@dataclass
class Core:
    """One actor's runtime state, as the step pipeline, the failure paths and recovery use it."""

    actor: Actor
    app: SagaApp
    settings: Any
    hooks: StepHooks
    policy: RetryPolicy
    ack_wait_s: float
    nc: NATS = field(init=False)
    js: JetStreamContext = field(init=False)
    saga: SagaLog = field(init=False)
    results: ResultStore[Any] = field(init=False)

    @property
    def name(self) -> str:
        """The actor's name (its consumer, its subject's last token)."""
        return self.actor.name

    @property
    def durable(self) -> bool:
        """False when the saga log is off (benchmarks): no records, no memo, no recovery."""
        return bool(self.settings.saga_log_enabled)

    def event(self, message: Message[Any], kind: str, attempt: int = 1, seq: int = 0,
              data: dict[str, Any] | None = None, duration_ms: float | None = None) -> SagaEvent:
        """An event of the message's current step, by this actor."""
        return SagaEvent(
            message_id=message.message_id,
            kind=kind,  # type: ignore[arg-type]
            actor=self.name,
            step_index=message.route.current_step,
            attempt=attempt,
            seq=seq,
            duration_ms=round(duration_ms, 3) if duration_ms is not None else None,
            trace_id=self.hooks.trace_id() or message.metadata.trace_id,
            data=data or {},
        )

    async def record(self, message: Message[Any], kind: str, *, attempt: int = 1, seq: int = 0,
                     data: dict[str, Any] | None = None, duration_ms: float | None = None) -> bool:
        """Record an event of the message's current step; False when it was already recorded. Recording
        `compensation_started` also marks the saga `compensating` (status transitions live here), even when
        the event was already there: a retried step repairs a transition its dead process did not make."""
        if not self.durable:
            return True
        created = await self.saga.record(self.event(message, kind, attempt, seq, data, duration_ms))
        if kind == "compensation_started":
            await self.mark_compensating(message)
        return created

    async def record_nowait(self, message: Message[Any], kind: str, *, attempt: int = 1,
                            data: dict[str, Any] | None = None) -> None:
        """Record an informational event without waiting for JetStream's ack (see SagaLog.record_nowait)."""
        if self.durable:
            await self.saga.record_nowait(self.event(message, kind, attempt, 0, data))

    async def mark_compensating(self, message: Message[Any]) -> None:
        """The saga's side effects are being undone (refused, and left alone, once the saga has ended)."""
        await self.saga.set_state(message.message_id, status="compensating", step_index=message.route.current_step,
                                  actor=self.name)

    async def publish(self, message: Message[Any], *, resume: int = 0) -> None:
        """Publish the message to its current step (`resume` > 0: a resumption by recovery, see msg_id)."""
        subject = message.subject_for(message.route.current)
        with self.hooks.publish_span(subject, message.message_id, transport.msg_id(message, resume)):
            await transport.publish(self.js, message, self.hooks.trace_headers(), resume=resume)

    async def forward(self, message: Message[Any]) -> None:
        """Publish the next hop, or finish the saga when the route is done."""
        route = message.route
        if route.current_step < len(route.steps):
            await self.publish(message)
            return
        if not self.durable:
            return
        outcome = message.metadata.outcome
        # A sticky outcome that is a terminal status (the saga was handed over, or failed) is how it ends.
        status = outcome if outcome in TERMINAL else "completed"
        last = route.current_step - 1
        await self.saga.record(SagaEvent(
            message_id=message.message_id, kind="saga_completed", actor=self.name, step_index=last,
            trace_id=message.metadata.trace_id or self.hooks.trace_id(), data={"status": status}))
        # A saga that never changed status has no `saga_state` key yet: it is created without a read, from what
        # the message carries (a saga that did change refuses the create and is read, see SagaLog.set_state).
        await self.saga.set_state(message.message_id, status=status, step_index=last, actor=self.name,
                                  allow_reopen=True, expected_revision=0, session_id=message.session_id,
                                  trace_id=message.metadata.trace_id, owner=message.owner,
                                  started_at=message.metadata.created_at)

    def extra(self, message: Message[Any], attempt: int) -> dict[str, Any]:
        """Log fields of a line about one step."""
        return {"actor": self.name, "message_id": message.message_id, "step": message.step_index,
                "attempt": attempt}
