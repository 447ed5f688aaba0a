"""The one `StepContext` (see `saga.actor.StepContext`): what a handler may use while it runs one step."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from nats.aio.msg import Msg

from saga.actor import Wakeup
from saga.log import SagaEvent
from saga.protocol import Message
from saga.runtime.core import Core


class StepContext:
    """One step's view of the runtime: its saga's history and records, the saga's result, the heartbeat."""

    def __init__(self, core: Core, message: Message[Any], msg: Msg, attempt: int,
                 wakeup: Wakeup | None = None) -> None:
        self._core = core
        # Set when the step runs again because its wait ended (a signal or the timer).
        self.wakeup = wakeup
        self._message = message
        self._msg = msg
        self.actor = core.name
        self.attempt = attempt
        self.settings = core.settings
        # Set once this step recorded `compensation_started`: the heartbeat then keeps the saga's
        # `compensating` state fresh, so the sweeper leaves a long compensation alone.
        self.compensating = False
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"supportmesh.actor.{core.name}"),
            {"message_id": message.message_id, "actor": core.name, "step": message.step_index},
        )

    @property
    def trace_id(self) -> str | None:
        """The trace id of the message being handled."""
        return self._core.hooks.trace_id() or self._message.metadata.trace_id

    async def history(self) -> list[SagaEvent]:
        """Every event of this saga so far, in the order they were written."""
        return await self._core.saga.history(self._message.message_id)

    async def record(self, kind: str, data: dict[str, Any], *, seq: int = 0) -> bool:
        """Record a saga event of this step; False when the same fact was already recorded."""
        created = await self._core.record(self._message, kind, attempt=self.attempt, seq=seq, data=data)
        self.compensating = self.compensating or kind == "compensation_started"
        return created

    async def stored_result(self) -> Any | None:
        """This saga's final result, when one was stored already."""
        return await self._core.results.get(self._message.message_id)

    async def save_result(self, result: Any, *, provisional: bool = False) -> bool:
        """Store this saga's final result once (False when one was stored already); with `provisional`, the
        answer given before the saga waits for a signal, shown until the final result replaces it."""
        if provisional:
            await self._core.results.save_provisional(result)
            return True
        return await self._core.results.save(result)

    async def in_progress(self) -> None:
        """Reset JetStream's ack timer for this delivery."""
        with contextlib.suppress(Exception):
            await self._msg.in_progress()

    async def publish_reply(self, subject: str, data: bytes) -> None:
        """Publish on core NATS (the reply subject of whoever waits for the answer)."""
        await self._core.nc.publish(subject, data, headers=self._core.hooks.trace_headers())
