"""A JetStream context whose writes ride through a bus that briefly cannot take them.

On a JetStream cluster, a stream has one leader; while a new one is elected (its node was killed, it is
restarting) a publish gets no responders, a 503 "JetStream system temporarily unavailable", or no answer at all
(the node it was sent to died with it). On a single server the same happens while it restarts. Every write of
the engine is a JetStream publish (a hop, a KV create/update/put/delete), so `RetryingJetStream.publish`
retries those transient failures with capped exponential backoff for up to `retry_s` seconds, then raises the
last error (the step is left for JetStream to redeliver, the gateway answers 503).

Retrying is safe because every write is idempotent on the server: a hop carries `Nats-Msg-Id` (a repeat inside
the duplicate window is dropped), a KV create or compare-and-set update carries the expected last sequence (a
repeat of a write that did land is refused as "wrong last sequence", which the callers read as "already
written"; `SagaLog.record` asks `ambiguous_writes()` whether one of its attempts went unanswered, and then tells
its own earlier write apart by its bytes), and a put or delete of the same value
twice leaves the same state. A refusal that is an answer (a full stream, a wrong sequence) is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

log = logging.getLogger("saga.jetstream")

# JetStream's answer when a stream or bucket is full ("maximum bytes exceeded"): a refusal, not a hiccup.
STORE_FULL = 10077


# Set by `ambiguous_writes()`: flipped when a write is retried after an attempt that may have landed.
_AMBIGUOUS: ContextVar[list[bool] | None] = ContextVar("saga_ambiguous_writes", default=None)


@contextlib.contextmanager
def ambiguous_writes() -> Iterator[list[bool]]:
    """Within the block, `box[0]` becomes True when a write was retried after an attempt that got no answer
    (it may have been stored: a "wrong last sequence" on the retry may then be the write's own first attempt)."""
    box = [False]
    token = _AMBIGUOUS.set(box)
    try:
        yield box
    finally:
        _AMBIGUOUS.reset(token)


def servers(url: str) -> list[str]:
    """The server URLs of a setting: one URL, or a cluster's seed URLs, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


def is_transient(exc: BaseException) -> bool:
    """True for the failures of a bus that cannot take a write right now (and may a moment later)."""
    if isinstance(exc, ServiceUnavailableError):
        return exc.err_code != STORE_FULL
    return isinstance(exc, (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError,
                            asyncio.TimeoutError, nats.errors.ConnectionReconnectingError,
                            nats.errors.StaleConnectionError))


# How long one attempt of a write waits for its ack. An ack takes milliseconds on a healthy bus; a write sent to a
# node that died with it is never answered, so waiting the API timeout (10 s) for it would hold the step that long.
WRITE_ATTEMPT_TIMEOUT_S = 4.0


class RetryingJetStream(JetStreamContext):
    """`nc.jetstream()` whose `publish` (and so every KV write of the buckets opened through it) retries
    transient failures for up to `retry_s` seconds, backing off from `base_s` to `max_s` between attempts, each
    attempt waiting at most `attempt_timeout_s` for its ack."""

    def __init__(self, conn: Any, *, retry_s: float = 20.0, base_s: float = 0.1, max_s: float = 1.0,
                 attempt_timeout_s: float | None = None, **options: Any) -> None:
        super().__init__(conn, **options)
        self.retry_s = retry_s
        self.attempt_timeout_s = attempt_timeout_s
        self.base_s = base_s
        self.max_s = max_s

    def _attempt_timeout(self, timeout: float | None, deadline: float) -> float:
        """How long one attempt waits: never past the bound (but a late attempt gets a fair second)."""
        wait = timeout if timeout is not None else self._timeout
        if self.attempt_timeout_s is not None and self.retry_s > 0:
            wait = min(wait, self.attempt_timeout_s)
        return min(wait, max(deadline - time.monotonic(), 1.0))

    async def _retry(self, what: str, attempt_once: Any) -> Any:
        """Run `attempt_once(timeout)` until it succeeds, fails for good, or the bound is reached."""
        deadline = time.monotonic() + self.retry_s
        delay = self.base_s
        attempt = 1
        while True:
            try:
                return await attempt_once(self._attempt_timeout(None, deadline))
            except Exception as exc:
                left = deadline - time.monotonic()
                if not is_transient(exc) or left <= 0:
                    raise
                box = _AMBIGUOUS.get()
                if box is not None and isinstance(exc, (nats.errors.TimeoutError, asyncio.TimeoutError)):
                    box[0] = True  # no answer: the attempt may have been stored
                log.warning("JetStream %s failed (%s, attempt %d); retrying for up to %.1f s more",
                            what, type(exc).__name__, attempt, left)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, self.max_s)
                attempt += 1

    async def publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,  # type: ignore[override]
                      stream: str | None = None, headers: dict[str, Any] | None = None,
                      msg_ttl: float | None = None) -> Any:
        async def once(wait: float) -> Any:
            return await super(RetryingJetStream, self).publish(
                subject, payload, timeout=min(wait, timeout) if timeout is not None else wait, stream=stream,
                headers=dict(headers) if headers else None, msg_ttl=msg_ttl)

        return await self._retry(f"write to {subject}", once)

    async def get_msg(self, stream_name: str, seq: int | None = None, subject: str | None = None,  # type: ignore[override]
                      direct: bool | None = False, next: bool | None = False) -> Any:
        """A message read (every KV get): retried like a write, so a read sent to a node that died with it is
        asked again of another instead of waiting out the API timeout."""
        async def once(wait: float) -> Any:
            async with asyncio.timeout(wait):  # not wait_for: on 3.11 it can swallow the caller's cancellation
                return await super(RetryingJetStream, self).get_msg(
                    stream_name, seq=seq, subject=subject, direct=direct, next=next)

        return await self._retry(f"read of {stream_name}", once)


def jetstream(nc: Any, *, timeout: float, retry_s: float) -> RetryingJetStream:
    """The JetStream context of a connection, with writes retried through a leader election (see the module)."""
    return RetryingJetStream(nc, timeout=timeout, retry_s=retry_s, attempt_timeout_s=WRITE_ATTEMPT_TIMEOUT_S)
