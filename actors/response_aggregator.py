"""response_aggregator: the last step. Writes the history rows and the session state, stores the outcome in
KV and answers the waiting gateway. Every write is idempotent: the step may run twice after a crash.

It also delivers the answer of a saga that failed elsewhere (the runtime routes it here with the reply set
and the outcome `failed`), so that answer is in the history like any other.

Being the one process that writes the history, it also enforces its retention: every
`history_prune_interval_s` it deletes rows older than `history_retention_days`, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from actors.base import Actor, StepContext
from gateway.history import HistoryStore
from gateway.sessions import SessionStore
from saga.protocol import Message
from saga.results import build_result
from supportmesh.config import Settings

log = logging.getLogger("supportmesh.actor.response_aggregator")


class ResponseAggregator(Actor):
    """Answers the customer."""

    name = "response_aggregator"

    async def start(self, settings: Settings) -> None:
        self.history = await HistoryStore(settings.sqlite_path).open()
        self.sessions = SessionStore(settings.redis_dsn, ttl_s=settings.session_ttl_s)
        self._prune_task = asyncio.create_task(self._prune_loop(settings), name="history-prune")

    async def _prune_loop(self, settings: Settings) -> None:
        while True:
            try:
                deleted = await self.history.prune(settings.history_retention_days,
                                                   batch=settings.history_prune_batch)
                if deleted:
                    log.info("deleted %d history rows older than %s days", deleted, settings.history_retention_days)
            except Exception as exc:  # a locked or full disk: try again next time
                log.warning("history retention failed: %s", exc)
            await asyncio.sleep(settings.history_prune_interval_s)

    async def stop(self) -> None:
        self._prune_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._prune_task
        await self.history.close()
        await self.sessions.close()

    async def _set_session_state(self, session_id: str, message_id: str, status: str) -> None:
        with contextlib.suppress(Exception):  # session state is a cache; history and KV are the record
            await self.sessions.set_state(session_id, last_message_id=message_id, status=status)

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        result = build_result(message, ctx.trace_id)
        taken = message.route.steps[: message.route.current_step + 1]
        # The three records are independent: written at once, and all stored before the customer is answered.
        await asyncio.gather(
            self.history.record_exchange(
                message_id=message.message_id, session_id=message.session_id,
                customer_text=message.payload.customer_message, agent_text=result.response,
                route_trace=taken, payload=message.payload.model_dump(mode="json"),
                customer_at=datetime.fromtimestamp(message.metadata.created_at, UTC).isoformat(
                    timespec="microseconds"),
            ),
            self._set_session_state(message.session_id, message.message_id, result.status),
            ctx.results.save(result),
        )
        if message.metadata.reply_subject:
            await ctx.publish_reply(message.metadata.reply_subject, result.to_bytes())
        return {}


ACTOR = ResponseAggregator
