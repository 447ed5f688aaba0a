"""Session state in Redis, with the specification's keys (JSON values, with a TTL):

- `session:{id}:state`   — last_message_id, last_activity, status: `active` (a saga is running), `resolved` /
  `escalated` (the last answer's), or `handover` (a person has the conversation: actors/handover.py). While a
  hand-over is open the status stays `handover` whatever a late saga writes; the gateway reads it.
- `session:{id}:context` — customer_email, customer_id, recent_orders, last_order_id
- `session:{id}:owner`   — who the session belongs to (`customer:<email>` or `guest`; a plain string, set once by
  the gateway, kept as long as sagas are)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from actors.handover import HANDOVER_STATUS, HandoverStore, handover_key, state_key

# KEYS: state, hand-over. ARGV: the state JSON, the same with status `handover`, ttl. An open hand-over keeps
# the status `handover` (a saga that finishes while a person has the session does not give it back to the bot).
_SET_STATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

__all__ = ["SessionStore", "context_key", "owner_key", "state_key"]


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
        self.handovers = HandoverStore(self.redis, ttl_s)
        self._set_state = self.redis.register_script(_SET_STATE)

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
        """Record the session's latest message and status (and refresh the TTL); while a hand-over is open the
        status stays `handover`."""
        value = {"last_message_id": last_message_id, "status": status,
                 "last_activity": datetime.now(UTC).isoformat(timespec="seconds")}
        held = {**value, "status": HANDOVER_STATUS}
        await self._set_state(keys=[state_key(session_id), handover_key(session_id)],
                              args=[orjson.dumps(value), orjson.dumps(held), self.ttl_s])

    async def get_owner(self, session_id: str) -> str | None:
        """Who the session belongs to, or None."""
        raw = await self.redis.get(owner_key(session_id))
        return raw.decode() if raw else None

    async def owner_and_state(self, session_id: str, *, refresh_s: float) -> tuple[str | None, dict[str, Any] | None]:
        """Who the session belongs to (the binding's lifetime extended by `refresh_s`) and its state, in one
        round trip: what a chat message needs to know of its session before anything else."""
        key = owner_key(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            owner, _, state = await pipe.get(key).expire(key, int(refresh_s)).get(state_key(session_id)).execute()
        return (owner.decode() if owner else None), (orjson.loads(state) if state else None)

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
