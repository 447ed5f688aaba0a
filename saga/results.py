"""Final chat outcomes, stored durably in the JetStream KV bucket `chat_results` (one key per message).

The response aggregator writes the outcome here *and* publishes it on the waiting gateway's core NATS reply
subject; the KV copy means a reply is never lost when the gateway restarts or its deadline passes
(`GET /api/chat/{message_id}` reads it).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from pydantic import BaseModel, ConfigDict, Field

from saga.protocol import Message

RESULTS_BUCKET = "chat_results"


class ChatResult(BaseModel):
    """What the customer gets back for one message."""

    model_config = ConfigDict(extra="forbid")

    message_id: str
    session_id: str
    status: Literal["resolved", "escalated"]
    response: str
    action_plan: dict[str, Any] | None = None
    execution_result: dict[str, Any] | None = None
    trace_id: str | None = None
    finished_at: float = Field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        """Serialize for KV and the reply subject."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> ChatResult:
        """Parse a stored or published result."""
        return cls.model_validate(orjson.loads(data))


class ResultStore:
    """The `chat_results` KV bucket."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, ttl_s: float) -> ResultStore:
        """Open the bucket, creating it (file storage, TTL) if it does not exist yet."""
        try:
            kv = await js.key_value(RESULTS_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=RESULTS_BUCKET, history=1, ttl=ttl_s, storage=StorageType.FILE)
            )
        return cls(kv)

    async def save(self, result: ChatResult) -> bool:
        """Store the outcome once; a second save of the same message is a no-op (returns False)."""
        try:
            await self._kv.create(result.message_id, result.to_bytes())
            return True
        except KeyWrongLastSequenceError:
            return False

    async def get(self, message_id: str) -> ChatResult | None:
        """The stored outcome, or None while the saga is still running."""
        try:
            entry = await self._kv.get(message_id)
        except KeyNotFoundError:
            return None
        return ChatResult.from_bytes(entry.value) if entry.value else None


FALLBACK_REPLY = (
    "I'm sorry, I couldn't finish handling your message automatically, so I've passed it to a colleague, who "
    "will follow up with you by email within one business day."
)


def fallback_result(message: Message, *, trace_id: str | None = None) -> ChatResult:
    """The honest answer of a saga that cannot finish (status `escalated`: a colleague follows up). It
    keeps the action plan and any side effects already executed, and says so, so nothing is hidden."""
    p = message.payload
    executed = p.execution_result
    text = FALLBACK_REPLY
    if executed is not None and executed.actions:
        done = ", ".join(f"{a.action} on order {a.order_id}" for a in executed.actions)
        text += f" Already done before the interruption: {done}; my colleague will confirm it with you."
    return ChatResult(
        message_id=message.message_id,
        session_id=message.session_id,
        status="escalated",
        response=text,
        action_plan=p.action_plan.model_dump(mode="json") if p.action_plan else None,
        execution_result=executed.model_dump(mode="json") if executed else None,
        trace_id=message.metadata.trace_id or trace_id,
    )
