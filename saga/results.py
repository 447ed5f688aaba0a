"""Final outcomes of sagas, stored durably in a JetStream KV bucket (one key per message).

The application names the bucket and the result model by subclassing `ResultStore` (its answering step writes
the outcome here *and* replies to whoever waits; the KV copy means an answer is never lost when the waiter
restarts or gives up). A result model is a pydantic model with a `message_id` field.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel

from saga.log import ensure_bucket

R = TypeVar("R", bound=BaseModel)


class ResultStore(Generic[R]):
    """A KV bucket of final results: `bucket` and `model` are the application's."""

    bucket: ClassVar[str]
    model: ClassVar[type[Any]]

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, ttl_s: float, max_bytes: int = -1, replicas: int | None = None) -> Any:
        """Open the bucket, creating it (file storage, TTL, size limit; -1 = none; `replicas` copies, see
        `saga.log.ensure_bucket`) if it does not exist yet."""
        kv = await ensure_bucket(js, cls.bucket, ttl_s, max_bytes, replicas)
        return cls(kv)

    async def save(self, result: R) -> bool:
        """Store the outcome once; a second save of the same message is a no-op (returns False)."""
        try:
            await self._kv.create(result.message_id, orjson.dumps(result.model_dump(mode="json")))  # type: ignore[attr-defined]
            return True
        except KeyWrongLastSequenceError:
            return False

    async def save_provisional(self, result: R) -> None:
        """Store an answer given before the saga ends (it waits for a signal): `get` returns it until the final
        outcome is saved. A later provisional answer of the same saga replaces it; the final one never does."""
        await self._kv.put(provisional_key(result.message_id),  # type: ignore[attr-defined]
                           orjson.dumps(result.model_dump(mode="json")))

    async def get(self, message_id: str, *, provisional: bool = True) -> R | None:
        """The stored outcome; else (with `provisional`) the answer given while the saga waits; else None while
        the saga is still running."""
        final = await self._read(message_id)
        if final is not None or not provisional:
            return final
        return await self._read(provisional_key(message_id))

    async def _read(self, key: str) -> R | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return self.model.model_validate(orjson.loads(entry.value)) if entry.value else None


def provisional_key(message_id: str) -> str:
    """Where a saga's provisional answer is kept (message ids have no dot, so it never names another saga)."""
    return f"{message_id}.provisional"
