"""What `POST /api/chat` asks Redis about its session: the owner and the state in one round trip, and the
state once (it decides both whether a colleague has the conversation and whether the message answers a
question the agent asked)."""

from __future__ import annotations

import redis.asyncio as aioredis

ASYNC = {"Prefer": "respond-async"}


async def gets(redis_url: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        return int((await client.info("commandstats")).get("cmdstat_get", {}).get("calls", 0))
    finally:
        await client.aclose()


async def test_a_chat_message_reads_its_sessions_state_once(gateway, redis_url) -> None:
    gw, client = gateway
    first = await client.post("/api/chat", json={"session_id": "s-reads", "message": "Where is my order 12345?"},
                              headers=ASYNC)
    assert first.status_code == 202, first.text
    before = await gets(redis_url)

    again = await client.post("/api/chat", json={"session_id": "s-reads", "message": "And order 33333?"},
                              headers=ASYNC)

    assert again.status_code == 202, again.text
    assert await gets(redis_url) - before == 2  # the owner and the state, nothing read twice
