"""Rate limits and the open-stream cap of the gateway, kept in Redis so that every gateway shares them.

- `POST /api/chat` (each one starts a saga): per client address and per customer.
- The reads (`GET /api/chat/{id}`, `/api/chat/{id}/events`, `/api/sagas/{id}`, the session history): per client
  address, with a higher limit.
- Open event streams: at most `max_streams_per_customer` at once per customer (per client address for guests).

The counting is the kept library `limits` (moving window, Redis storage through redis-py), not a hand-made bucket.
A refused request gets 429, `Retry-After` (seconds) and a JSON reason. The limiter fails OPEN: when Redis does
not answer, the request goes through, with a warning in the log and `supportmesh_gateway_rate_limiter_errors_total`
counted. A limiter must not take the service down with it.

The client address is the ASGI peer. `X-Forwarded-For` is believed only when the peer is one of
`SUPPORTMESH_TRUSTED_PROXIES`: otherwise a client could name a fresh address in every request.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import redis.asyncio as aioredis
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from gateway.auth import caller_from
from observability import metrics
from supportmesh.config import Settings

log = logging.getLogger("supportmesh.gateway.ratelimit")

CHAT_ROUTE = "/api/chat"
EVENTS_ROUTE = "/api/chat/{message_id}/events"
READ_ROUTES = frozenset({"/api/chat/{message_id}", EVENTS_ROUTE, "/api/sagas/{message_id}",
                         "/api/sessions/{session_id}/history"})
# Every (route, scope) that can be refused: their counters start at zero (so `increase()` sees the first 429).
REFUSALS = [(CHAT_ROUTE, "address"), (CHAT_ROUTE, "customer"), *((r, "address") for r in sorted(READ_ROUTES)),
            (EVENTS_ROUTE, "customer")]
# A Redis call of the limiter gives up after this long (then the request goes through).
REDIS_TIMEOUT_S = 0.5
# A stream's place in the cap lasts this long unless renewed (every event renews it; a stream closes after
# `STREAM_IDLE_TIMEOUT_S` without events): the safety net for a gateway that dies with streams open.
STREAM_SLOT_TTL_S = 150.0
KEY_PREFIX = "supportmesh:ratelimit"
# Retry-After of a stream refused by the cap: a guess (a place frees when another stream closes).
STREAM_RETRY_AFTER_S = 5

# Atomically: drop expired slots, refuse when `limit` are held, otherwise hold one until `expires`.
ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RateLimited(Exception):
    """A request over a limit: answered 429 with `Retry-After`."""

    def __init__(self, route: str, scope: str, retry_after_s: int, reason: str) -> None:
        super().__init__(reason)
        self.route, self.scope, self.retry_after_s, self.reason = route, scope, retry_after_s, reason


async def handle_rate_limited(_: Request, exc: Exception) -> JSONResponse:
    """429 with `Retry-After` and a JSON reason; counted by route template and scope."""
    assert isinstance(exc, RateLimited)
    metrics.RATE_LIMITED.labels(exc.route, exc.scope).inc()
    return JSONResponse({"detail": exc.reason, "reason": "rate_limited", "scope": exc.scope,
                         "retry_after_s": exc.retry_after_s},
                        status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


def trusted_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`SUPPORTMESH_TRUSTED_PROXIES` (IPs or CIDRs, comma-separated) as networks."""
    return [ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()]


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address(request: Request, trusted: list[Any]) -> str:
    """The client's address: the ASGI peer, unless the peer is a trusted proxy; then the nearest address in
    `X-Forwarded-For` (read from the right) that is not itself a trusted proxy. Entries left of that are the
    client's to write, so they are never believed."""
    peer = request.client.host if request.client else "unknown"
    peer_ip = _ip(peer)
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    hops = [h for header in request.headers.getlist("x-forwarded-for") for h in header.split(",")]
    address = peer
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break  # garbage from here on is not an address anyone vouches for
        address = str(ip)
        if not any(ip in net for net in trusted):
            break
    return address


def customer_key(request: Request) -> str | None:
    """THE customer a request is counted against: the verified customer (the token's `sub`), or None for a guest
    or a token that proves nothing (counted by address; the route answers such a token 401). Every limit keyed
    by customer (the chat limit, the open-stream cap) follows it. Identity never comes from a body."""
    settings = getattr(getattr(request.app.state, "gateway", None), "settings", None)
    if settings is None:
        return None
    try:
        return caller_from(request, settings.auth_secret, settings.auth_leeway_s).email
    except HTTPException:
        return None


class RateLimiter:
    """The gateway's limits over one Redis (shared by every gateway)."""

    def __init__(self, settings: Settings) -> None:
        self.chat_address = parse_many(settings.rate_limit_chat_address)
        self.chat_customer = parse_many(settings.rate_limit_chat_customer)
        self.reads = parse_many(settings.rate_limit_reads)
        self.max_streams = settings.max_streams_per_customer
        self.trusted = trusted_networks(settings.trusted_proxies)
        options = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
        self.storage = RedisStorage(f"async+{settings.redis_dsn}", implementation="redispy",
                                    key_prefix=KEY_PREFIX, wrap_exceptions=True, **options)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.redis = aioredis.from_url(settings.redis_dsn, **options)
        self._acquire = self.redis.register_script(ACQUIRE_SLOT)
        for route, scope in REFUSALS:
            metrics.RATE_LIMITED.labels(route, scope)

    async def close(self) -> None:
        """Close the stream cap's connection pool."""
        await self.redis.aclose()

    async def check(self, route: str, bucket: str, scope: str, items: list[RateLimitItem], key: str) -> None:
        """Count one request of `key` against `items` in `bucket`; RateLimited (429 on `route`) when one is
        exhausted. Fails open."""
        for item in items:
            try:
                allowed = await self.limiter.hit(item, bucket, scope, key)
                if allowed:
                    continue
                reset_at, _ = await self.limiter.get_window_stats(item, bucket, scope, key)
            except Exception as exc:
                metrics.RATE_LIMITER_ERRORS.labels("rate_limit").inc()
                log.warning("rate limiter unavailable, letting the request through: %s", type(exc).__name__)
                return
            retry_after = max(1, math.ceil(reset_at - time.time()))
            raise RateLimited(route, scope, retry_after,
                              f"too many requests to {route} per {scope} (limit {item}); retry in {retry_after} s")

    async def open_stream(self, route: str, request: Request) -> StreamSlot | None:
        """Hold one of the customer's (or guest address's) open-stream places; RateLimited when all are held.
        None when Redis does not answer (fails open: the stream is served, uncounted)."""
        key = customer_key(request)
        scope, key = ("customer", key) if key else ("address", client_address(request, self.trusted))
        slot = StreamSlot(self, f"{KEY_PREFIX}:streams:{scope}:{key}")
        now = time.time()
        try:
            held = await self._acquire(keys=[slot.key], args=[now, now + STREAM_SLOT_TTL_S, self.max_streams,
                                                              slot.member, int(STREAM_SLOT_TTL_S * 1000)])
        except Exception as exc:
            metrics.RATE_LIMITER_ERRORS.labels("stream_cap").inc()
            log.warning("stream cap unavailable, letting the stream open: %s", type(exc).__name__)
            return None
        if not held:
            raise RateLimited(route, scope, STREAM_RETRY_AFTER_S,
                              f"at most {self.max_streams} open event streams per {scope}; close one first")
        metrics.OPEN_STREAMS.inc()
        return slot


class StreamSlot:
    """One open stream's place in the cap: renewed by its events, given back when the stream closes (normally,
    on client disconnect, or when it never started); the TTL frees it if the gateway dies first."""

    def __init__(self, limiter: RateLimiter, key: str) -> None:
        self.limiter, self.key, self.member = limiter, key, uuid.uuid4().hex
        self.released = False

    async def renew(self) -> None:
        if self.released:
            return
        try:
            await self.limiter.redis.zadd(self.key, {self.member: time.time() + STREAM_SLOT_TTL_S}, xx=True)
        except Exception as exc:
            log.warning("could not renew a stream's place: %s", type(exc).__name__)

    async def release(self) -> None:
        """Give the place back (idempotent; shielded, since it runs while the stream's task is cancelled)."""
        if self.released:
            return
        self.released = True
        metrics.OPEN_STREAMS.dec()
        with anyio.move_on_after(2 * REDIS_TIMEOUT_S, shield=True):
            try:
                await self.limiter.redis.zrem(self.key, self.member)
            except Exception as exc:
                log.warning("could not release a stream's place (its TTL will): %s", type(exc).__name__)


async def guarded(stream: AsyncIterator[dict[str, str]], slot: StreamSlot | None) -> AsyncIterator[dict[str, str]]:
    """The event stream, holding `slot` while it is open and giving it back however it ends."""
    try:
        async for event in stream:
            yield event
            if slot is not None:
                await slot.renew()
    finally:
        if slot is not None:
            await slot.release()
        aclose: Callable[[], Any] | None = getattr(stream, "aclose", None)
        if aclose is not None:
            with anyio.move_on_after(2, shield=True):
                await aclose()


async def rate_limit(request: Request) -> None:
    """App-wide dependency: the limits of the route the request matched (others pass)."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    route = getattr(request.scope.get("route"), "path", None)
    if limiter is None or route is None:
        return
    if route == CHAT_ROUTE and request.method == "POST":
        await limiter.check(route, "chat", "address", limiter.chat_address, client_address(request, limiter.trusted))
        customer = customer_key(request)
        if customer is not None:
            await limiter.check(route, "chat", "customer", limiter.chat_customer, customer)
    elif route in READ_ROUTES:
        # One budget for all the reads of an address.
        await limiter.check(route, "reads", "address", limiter.reads, client_address(request, limiter.trusted))
