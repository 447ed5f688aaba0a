"""Hand-overs: a session a person has taken over from the bot, in Redis next to the session's state.

While a session has an open hand-over, its status (`session:{id}:state`) is `handover`, the gateway starts no
saga for its messages (they go to the support team's queue) and an agent answers in the console. Closing it
gives the session back to the bot.

- `session:{id}:handover` — a hash: session_id, owner, customer_email, ticket_id, reason, message_id (the
  escalated message), opened_at, plus counters and the customer's latest words while a person has it.
- `session:handovers:open` — the queue: a sorted set of the session ids with an open hand-over, by opened_at
  (a key of the `session:` prefix, which both Redis users of sessions may touch; no session key ends in `:open`).
- `session:{id}:handover-opened:{message_id}` — set once the escalated message opened its hand-over, so a
  response step that runs again (after a crash) never reopens a hand-over an agent has closed meanwhile.

Opening is one Lua script (the check and every write together); the response aggregator opens hand-overs, the
gateway reads, counts and closes them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from saga.log import SagaEvent

HANDOVER_STATUS = "handover"
QUEUE_KEY = "session:handovers:open"
# What the queue item keeps of the customer's latest message (the conversation itself is in the history).
LAST_MESSAGE_CHARS = 500


def state_key(session_id: str) -> str:
    """Redis key of a session's state (actors/sessions.py reads and writes it)."""
    return f"session:{session_id}:state"


def handover_key(session_id: str) -> str:
    """Redis key of a session's open hand-over."""
    return f"session:{session_id}:handover"


def opened_key(session_id: str, message_id: str) -> str:
    """Redis key marking that `message_id` opened its session's hand-over (once, ever)."""
    return f"session:{session_id}:handover-opened:{message_id}"


# KEYS: hand-over hash, queue, opened marker, state. ARGV: ttl, session id, opened_at, the state JSON, then the
# hash's field/value pairs. Opens only if this message never opened one and none is open; returns 1 if opened.
_OPEN = """
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[1])
return 1
"""
# KEYS: hand-over hash. ARGV: the counter to add one to, then field/value pairs. Only on an open hand-over (a
# note after its close must not leave a stray record behind); returns 1 when noted.
_NOTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""
# KEYS: hand-over hash, queue. Returns the hash's fields (flat) and deletes it, or nothing when none is open.
_CLOSE = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return fields
"""


def escalation_of(history: list[SagaEvent]) -> tuple[str | None, str]:
    """The handoff ticket and reason of a saga from its log: the latest `escalated` or `saga_failed` event
    naming a ticket; (None, "") when no ticket was opened."""
    for event in reversed(history):
        ticket = event.data.get("ticket_id")
        if event.kind in ("escalated", "saga_failed") and isinstance(ticket, str) and ticket:
            return ticket, str(event.data.get("reason") or event.kind)
    return None, ""


def _decoded(raw: dict[Any, Any] | list[Any]) -> dict[str, str]:
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=False))
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


class HandoverStore:
    """Open, read, note and close the hand-overs of sessions."""

    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._open = redis.register_script(_OPEN)
        self._close = redis.register_script(_CLOSE)
        self._note = redis.register_script(_NOTE)

    async def open(self, *, session_id: str, message_id: str, owner: str, customer_email: str, ticket_id: str,
                   reason: str, customer_message: str = "") -> bool:
        """Open the session's hand-over for the escalated `message_id` (once; never over an open one, never
        again after it was closed); True when this call opened it."""
        now = time.time()
        state = orjson.dumps({"last_message_id": message_id, "status": HANDOVER_STATUS,
                              "last_activity": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now))})
        record = {"session_id": session_id, "message_id": message_id, "owner": owner,
                  "customer_email": customer_email, "ticket_id": ticket_id, "reason": reason,
                  "opened_at": repr(now), "customer_messages": "0", "agent_replies": "0",
                  "last_customer_message": customer_message[:LAST_MESSAGE_CHARS], "last_customer_at": repr(now)}
        flat = [x for pair in record.items() for x in pair]
        keys = [handover_key(session_id), QUEUE_KEY, opened_key(session_id, message_id), state_key(session_id)]
        return bool(await self._open(keys=keys, args=[self.ttl_s, session_id, now, state, *flat]))

    async def get(self, session_id: str) -> dict[str, Any] | None:
        """The session's open hand-over, or None."""
        raw = await self.redis.hgetall(handover_key(session_id))
        return _record(_decoded(raw)) if raw else None

    async def is_open(self, session_id: str) -> bool:
        """Whether the session has an open hand-over."""
        return bool(await self.redis.exists(handover_key(session_id)))

    async def open_sessions(self, limit: int = 200) -> list[str]:
        """The sessions with an open hand-over, oldest first."""
        ids = await self.redis.zrange(QUEUE_KEY, 0, limit - 1)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def count(self) -> int:
        """How many hand-overs are open."""
        return int(await self.redis.zcard(QUEUE_KEY))

    async def note_customer_message(self, session_id: str, text: str) -> bool:
        """The customer wrote while a person has the session: the queue item shows it. False when the
        hand-over is not open (any more)."""
        args = ["customer_messages", "last_customer_message", text[:LAST_MESSAGE_CHARS],
                "last_customer_at", repr(time.time())]
        return bool(await self._note(keys=[handover_key(session_id)], args=args))

    async def note_agent_reply(self, session_id: str, agent: str) -> bool:
        """An agent answered: counted, and the item says who answered last. False when not open."""
        args = ["agent_replies", "last_agent", agent, "last_agent_at", repr(time.time())]
        return bool(await self._note(keys=[handover_key(session_id)], args=args))

    async def close(self, session_id: str) -> dict[str, Any] | None:
        """Close the session's hand-over; the record it had, or None when none was open."""
        raw = await self._close(keys=[handover_key(session_id), QUEUE_KEY], args=[session_id])
        return _record(_decoded(raw)) if raw else None


def _record(fields: dict[str, str]) -> dict[str, Any]:
    """The hand-over as the console reads it (numbers as numbers)."""
    out: dict[str, Any] = dict(fields)
    for name in ("opened_at", "last_customer_at", "last_agent_at"):
        if name in out:
            out[name] = float(out[name])
    for name in ("customer_messages", "agent_replies"):
        out[name] = int(out.get(name, 0))
    return out
