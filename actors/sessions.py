"""Session state in Redis, with the specification's keys (JSON values, with a TTL):

- `session:{id}:state`   — last_message_id, last_activity, status (active / escalated / resolved)
- `session:{id}:context` — customer_email, customer_id, recent_orders, last_order_id
- `session:{id}:owner`   — who the session belongs to (`customer:<email>` or `guest`; a plain string, set once by
  the gateway, kept as long as sagas are)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis


def state_key(session_id: str) -> str:
    """Redis key of a session's state."""
    return f"session:{session_id}:state"


def owner_key(session_id: str) -> str:
    """Redis key of a session's owner."""
    return f"session:{session_id}:owner"


def context_key(session_id: str) -> str:
    """Redis key of a session's customer context."""
    return f"session:{session_id}:context"


class SessionStore:
    """Reads and writes session state and context."""

    def __init__(self, url: str, ttl_s: int) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.ttl_s = ttl_s

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.redis.ping()

    async def _get(self, key: str) -> dict[str, Any] | None:
        raw = await self.redis.get(key)
        return orjson.loads(raw) if raw else None

    async def get_state(self, session_id: str) -> dict[str, Any] | None:
        """The session's state, or None."""
        return await self._get(state_key(session_id))

    async def set_state(self, session_id: str, *, last_message_id: str, status: str) -> None:
        """Record the session's latest message and status (and refresh the TTL)."""
        value = {"last_message_id": last_message_id, "status": status,
                 "last_activity": datetime.now(UTC).isoformat(timespec="seconds")}
        await self.redis.set(state_key(session_id), orjson.dumps(value), ex=self.ttl_s)

    async def get_owner(self, session_id: str, *, refresh_s: float | None = None) -> str | None:
        """Who the session belongs to, or None; `refresh_s` also extends the binding's lifetime."""
        if refresh_s is None:
            raw = await self.redis.get(owner_key(session_id))
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                raw, _ = await pipe.get(owner_key(session_id)).expire(owner_key(session_id), int(refresh_s)).execute()
        return raw.decode() if raw else None

    async def claim(self, session_id: str, owner: str, ttl_s: float) -> str:
        """Bind the session to `owner` unless it is bound already; returns the session's owner (the first one to
        claim it wins)."""
        previous = await self.redis.set(owner_key(session_id), owner, nx=True, ex=int(ttl_s), get=True)
        return previous.decode() if previous else owner

    async def get_context(self, session_id: str) -> dict[str, Any] | None:
        """The customer context of the session, or None."""
        return await self._get(context_key(session_id))

    async def set_context(self, session_id: str, context: dict[str, Any]) -> None:
        """Store the customer context of the session (and refresh the TTL)."""
        await self.redis.set(context_key(session_id), orjson.dumps(context), ex=self.ttl_s)
