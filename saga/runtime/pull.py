"""A long-lived pull on one durable consumer, with credits: no request per message.

nats-py's `fetch` sends one or two pull requests per call (a no-wait probe, then a waiting request), and an
actor that fetches as slots free up sends about one per message. Here the actor keeps one pull request
waiting on the server for as many messages as it has free slots (its credits). The request stays open for
`expires_s` and is served message by message as they are published; the next one is sent when its credits
are used up or it has ended. When idle that is one request per `expires_s` (which also bounds how long a
request lost with a restarted server can stall the actor); under a steady load, one per batch.

JetStream delivers a message with its own subject, not the request's, so messages are counted against the
one open request; a status (no payload, no reply subject) comes on the request's own reply subject:
- a message uses one credit, and the request is over when none is left (the server says nothing then);
- `408` (expired) or `404`/`409` (ended or refused) end the request;
- `409 Consumer Deleted` or `503` (no responders: the consumer or JetStream is gone) ask for a rebind;
- a request that never answers (the server restarted) is given up after twice its expiry.
A message of a request already given up on is still run: JetStream counts it as delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from nats.aio.msg import Msg

log = logging.getLogger("saga.runtime")

#: Statuses after which the consumer must be bound again (declared if it is missing).
_REBIND = ("503",)
_REBIND_DESCRIPTIONS = ("consumer deleted", "consumer is push based")


@dataclass
class _Request:
    token: str  # the last token of its reply subject
    credits: int  # messages it may still bring
    ends_at: float  # monotonic time after which it is given up on even if the server never said so


class CreditPull:
    """One pull request kept open on a durable consumer for the actor's free slots; `deliver` gets each
    message."""

    def __init__(self, nc: object, api_prefix: str, stream: str, consumer: str, *, deliver: Callable[[Msg], None],
                 expires_s: float = 1.0) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._deliver = deliver
        self.expires_s = expires_s
        self._request: _Request | None = None
        self._inbox = ""
        self._sub: object | None = None
        self._count = 0
        self._pause_until = 0.0
        self.wake = asyncio.Event()
        #: Set when the server said the consumer is gone; the owner binds again and clears it.
        self.rebind = asyncio.Event()

    @property
    def open_requests(self) -> int:
        """Requests still open on the server, as far as this client knows (0 or 1)."""
        return 0 if self._request is None else 1

    async def start(self) -> None:
        """Subscribe to this pull's inbox (every request gets a reply subject under it)."""
        self._inbox = self._nc.new_inbox()  # type: ignore[attr-defined]
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Stop listening; messages still on their way are redelivered by JetStream after `ack_wait`."""
        self._request = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None

    def forget(self) -> None:
        """Drop the open request (after a rebind: the server's requests went with the old consumer)."""
        self._request = None
        self.wake.set()

    async def ask(self, free: int) -> None:
        """Ask for up to `free` messages when no request is open."""
        now = time.monotonic()
        self.drop_expired(now)
        if self._request is not None or free <= 0 or now < self._pause_until:
            return
        self._count += 1
        self._request = _Request(str(self._count), free, now + 2 * self.expires_s)
        body = orjson.dumps({"batch": free, "expires": int(self.expires_s * 1e9)})
        await self._nc.publish(self._next_subject, body,  # type: ignore[attr-defined]
                               reply=f"{self._inbox}.{self._request.token}")

    def next_deadline(self) -> float:
        """Seconds until the open request must be given up on (or the pause ends)."""
        now = time.monotonic()
        ends = [self._request.ends_at] if self._request is not None else []
        if self._pause_until > now:
            ends.append(self._pause_until)
        return max(0.01, min(ends) - now) if ends else self.expires_s

    def drop_expired(self, now: float | None = None) -> None:
        """Give up on a request the server should have ended long ago (it restarted, or lost it)."""
        now = time.monotonic() if now is None else now
        if self._request is not None and self._request.ends_at <= now:
            self._request = None

    async def _on_msg(self, msg: Msg) -> None:
        request = self._request
        # A delivery carries its ack subject as reply; the server's statuses have none. (A `Status` header
        # that a publisher put on a message does not make it a status: it is a delivery, run and recorded.)
        status = (msg.headers or {}).get("Status", "") if not msg.reply else None
        if status is None:
            if request is not None:
                request.credits -= 1
                if request.credits <= 0:
                    self._request = None
                    self.wake.set()
            self._deliver(msg)
            return
        if status == "100" or request is None or msg.subject.rpartition(".")[2] != request.token:
            return  # a heartbeat, or the end of a request already given up on
        self._request = None
        description = (msg.headers or {}).get("Description", "").lower()
        if status in _REBIND or any(d in description for d in _REBIND_DESCRIPTIONS):
            log.warning("pull request answered %s %s; binding the consumer again", status, description)
            self.rebind.set()
        if status != "408":
            # Refused: do not ask again at once, or a refusing server would be asked in a loop.
            self._pause_until = time.monotonic() + min(0.1, self.expires_s)
        self.wake.set()
