"""Replies from the response aggregator to the gateway instance that is waiting for them.

Each gateway process subscribes to its own core NATS subject `supportmesh.reply.<instance>` and names it in
the messages it publishes, so with several gateway replicas a reply reaches the one holding the HTTP
request. Replies are also stored in KV (`chat_results`), so a missed reply is read from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from nats.aio.client import Client as NATS
from prometheus_client import Counter

from actors.results import ChatResult

REPLY_PREFIX = "supportmesh.reply"
# How each answer reached the gateway: "subject" (this instance's reply subject, the normal path) or "kv" (read
# from chat_results after the deadline: a missed or misrouted reply). Many "kv" means replies go astray.
REPLIES = Counter("supportmesh_gateway_replies_total", "Chat answers by the path they reached the gateway.", ["via"])
for _via in ("subject", "kv"):
    REPLIES.labels(_via)


class ReplyRouter:
    """Matches reply messages to waiting requests by message id."""

    def __init__(self, nc: NATS, instance_id: str | None = None) -> None:
        self.nc = nc
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.subject = f"{REPLY_PREFIX}.{self.instance_id}"
        # Several requests may wait for one message (a retry with the same Idempotency-Key): each its own future.
        self._waiters: dict[str, list[asyncio.Future[ChatResult]]] = {}
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe to this instance's reply subject."""
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_reply)

    async def stop(self) -> None:
        """Unsubscribe and release every waiter."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()

    def expect(self, message_id: str) -> asyncio.Future[ChatResult]:
        """Register interest in a reply before the message is published (no race with a fast reply)."""
        fut: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_id, []).append(fut)
        return fut

    def forget(self, message_id: str, fut: asyncio.Future[ChatResult]) -> None:
        """Stop waiting with `fut` (deadline passed, request answered or cancelled); others keep waiting."""
        futures = self._waiters.get(message_id, [])
        if fut in futures:
            futures.remove(fut)
        if not futures:
            self._waiters.pop(message_id, None)

    @property
    def waiting(self) -> int:
        """How many requests are waiting for a reply."""
        return sum(len(futures) for futures in self._waiters.values())

    async def _on_reply(self, msg: Any) -> None:
        try:
            result = ChatResult.from_bytes(msg.data)
        except Exception:
            return
        for fut in self._waiters.pop(result.message_id, []):
            if not fut.done():
                fut.set_result(result)
