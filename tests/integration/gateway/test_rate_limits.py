"""Rate limits and the open-stream cap, against a real nats-server and redis-server and two gateways sharing that
Redis: the limit is hit (429, Retry-After, a JSON reason, counted), it recovers after the window, two gateways
share the count, a spoofed X-Forwarded-For does not evade it, the stream cap holds across gateways and frees
a place when a client goes away, and with Redis down the limiter lets everything through (fails open)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.datastructures import Headers

from gateway.ratelimit import RateLimiter
from observability import metrics

from tests.support.asgi_server import InProcessServer
from tests.support.identity import TEST_SECRET, auth
from tests.support.mesh import LOAD_LIMITS

WINDOW = "3/2second"  # short: the recovery is seen in seconds
ASYNC = {"Prefer": "respond-async"}  # POST /api/chat answers 202 at once (no actors run here)


@pytest.fixture
async def make_gateways(harness, redis_url, tmp_path):
    """`await make(count, **settings)`: `count` gateway apps over one nats-server and one redis-server."""
    from gateway.app import create_app

    apps: list[Any] = []

    async def make(count: int = 2, *, start: bool = True, **overrides: Any) -> list[Any]:
        made = []
        for _ in range(count):
            settings = harness.settings.model_copy(update={
                "redis_url": redis_url, "sqlite_path": str(tmp_path / f"history-{len(apps)}.db"),
                "chat_deadline_s": 1.5, "auth_secret": TEST_SECRET, **LOAD_LIMITS, **overrides})
            app = create_app(settings)
            if start:
                await app.state.gateway.start()
            apps.append((app, start))
            made.append(app)
        return made

    try:
        yield make
    finally:
        for app, started in apps:
            if started:
                await app.state.gateway.stop()
            with contextlib.suppress(Exception):
                await app.state.rate_limiter.close()


def peer() -> str:
    """A fresh client address (the session's Redis keeps counts between tests)."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def client(app: Any, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                             base_url="http://gateway", timeout=30)


def chat_body(email: str | None = None) -> dict[str, str]:
    return {"session_id": uuid.uuid4().hex, "customer_email": email or f"{uuid.uuid4().hex[:12]}@example.com",
            "message": "Where is my order 12345?"}


def guest_body() -> dict[str, str]:
    """A chat body that names no customer (a signed-in customer's comes from the token)."""
    return {"session_id": uuid.uuid4().hex, "message": "Where is my order 12345?"}


def assert_429(r: httpx.Response, scope: str) -> int:
    assert r.status_code == 429, (r.status_code, r.text)
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 2, retry_after  # within the 2 s window
    body = r.json()
    assert body["reason"] == "rate_limited" and body["scope"] == scope and body["retry_after_s"] == retry_after
    assert body["detail"]
    return retry_after


async def until(predicate: Any, timeout_s: float = 30.0) -> Any:
    """Call the async `predicate` until it returns something true (generous: machines differ in speed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_chat_limit_per_address_is_shared_by_two_gateways_and_recovers(make_gateways) -> None:
    a, b = await make_gateways(2, rate_limit_chat_address=WINDOW)
    address = peer()
    before = metrics.RATE_LIMITED.labels("/api/chat", "address")._value.get()
    async with client(a, address) as ca, client(b, address) as cb:
        # Three chats of different customers, alternating gateways: the third is the last the window allows.
        for c in (ca, cb, ca):
            r = await c.post("/api/chat", json=chat_body(), headers=ASYNC)
            assert r.status_code == 202, r.text
        over = [await c.post("/api/chat", json=chat_body(), headers=ASYNC) for c in (cb, ca)]
        for r in over:
            assert_429(r, "address")
        assert metrics.RATE_LIMITED.labels("/api/chat", "address")._value.get() == before + 2
        # Another address is not affected.
        async with client(a, peer()) as other:
            assert (await other.post("/api/chat", json=chat_body(), headers=ASYNC)).status_code == 202
        # After the window, the address may chat again (refused tries do not extend the window).
        refused_at = time.monotonic()

        async def accepted() -> bool:
            return (await cb.post("/api/chat", json=chat_body(), headers=ASYNC)).status_code == 202

        assert await until(accepted), "the chat limit never recovered"
        assert time.monotonic() - refused_at < 15


async def test_chat_limit_per_customer_across_addresses(make_gateways) -> None:
    a, b = await make_gateways(2, rate_limit_chat_customer=WINDOW)
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    variants = [email, email.upper(), email, email]  # the same signed-in customer, however the token writes it
    codes = []
    for i, written in enumerate(variants):
        async with client((a, b)[i % 2], peer()) as c:
            r = await c.post("/api/chat", json=guest_body(), headers={**ASYNC, **auth(written)})
            codes.append(r.status_code)
    assert codes[:3] == [202, 202, 202], codes
    assert_429(r, "customer")
    async with client(a, peer()) as c:  # another customer from another address: unaffected
        assert (await c.post("/api/chat", json=chat_body(), headers=ASYNC)).status_code == 202
    async with client(b, peer()) as c:  # a guest naming that customer's email is not that customer
        assert (await c.post("/api/chat", json=chat_body(email), headers=ASYNC)).status_code == 202


async def test_reads_are_limited_per_address_with_one_budget(make_gateways) -> None:
    a, b = await make_gateways(2, rate_limit_reads=WINDOW)
    address = peer()
    async with client(a, address) as ca, client(b, address) as cb:
        reads = [ca.get("/api/chat/unknown-id"), cb.get("/api/sagas/unknown-id"),
                 ca.get("/api/sessions/s1/history")]
        for read in reads:
            assert (await read).status_code in (200, 404)
        r = await cb.get("/api/chat/unknown-id")
        assert_429(r, "address")
        assert (await ca.get("/healthz")).status_code == 200  # not a limited route
        assert (await ca.get("/api/config")).status_code == 200

        async def readable() -> bool:
            return (await ca.get("/api/sagas/unknown-id")).status_code == 404

        assert await until(readable), "the read limit never recovered"


async def test_spoofed_forwarded_for_from_an_untrusted_peer_does_not_evade_the_limit(make_gateways) -> None:
    (a,) = await make_gateways(1, rate_limit_chat_address=WINDOW)
    async with client(a, peer()) as c:
        codes = [(await c.post("/api/chat", json=chat_body(), headers={**ASYNC, "X-Forwarded-For": peer()})).status_code
                 for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429], codes


async def test_forwarded_for_is_honoured_only_from_a_trusted_proxy(make_gateways) -> None:
    proxy = peer()
    (a,) = await make_gateways(1, rate_limit_chat_address=WINDOW, trusted_proxies=f"{proxy}/32, 192.0.2.0/24")
    customer, forger = peer(), peer()
    async with client(a, proxy) as c:
        async def send(xff: str) -> int:
            return (await c.post("/api/chat", json=chat_body(), headers={**ASYNC, "X-Forwarded-For": xff})).status_code

        # Behind the proxy, each client has its own count: five clients, one chat each, all accepted.
        assert [await send(peer()) for _ in range(5)] == [202] * 5
        # A client writing addresses in front of its own (the proxy appends the real one, and a second trusted
        # hop too) is counted by its real address.
        codes = [await send(f"{peer()}, {forger}, 192.0.2.7") for _ in range(4)]
        assert codes == [202, 202, 202, 429], codes
        assert await send(customer) == 202


async def serve(app: Any) -> tuple[str, uvicorn.Server, asyncio.Task]:
    """The app over real HTTP on a free loopback port (its lifespan opens the gateway's connections)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = InProcessServer(uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "the gateway did not start"
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, task


@contextlib.asynccontextmanager
async def served(apps: list[Any]) -> AsyncIterator[list[str]]:
    running = [await serve(app) for app in apps]
    try:
        yield [url for url, _, _ in running]
    finally:
        for _, server, _ in running:
            server.should_exit = True
        for _, _, task in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)


async def test_open_streams_are_capped_across_gateways_and_freed_on_disconnect(make_gateways, redis_url) -> None:
    import redis.asyncio as aioredis

    apps = await make_gateways(2, start=False, max_streams_per_customer=2)
    # Guests are capped per address; every stream here comes from 127.0.0.1: start from no open stream.
    r = aioredis.from_url(redis_url)
    await r.delete("supportmesh:ratelimit:streams:address:127.0.0.1")
    async with served(apps) as (url_a, url_b), httpx.AsyncClient(timeout=30) as http:
        body = chat_body()
        started = await http.post(f"{url_a}/api/chat", json=body, headers=ASYNC)
        message_id = started.json()["message_id"]
        http.headers["X-Session-Id"] = body["session_id"]  # a guest reads what its session started
        opened: list[Any] = []
        async with contextlib.AsyncExitStack() as stack:
            for url in (url_a, url_b):  # one stream on each gateway: the cap is shared
                resp = await stack.enter_async_context(http.stream("GET", f"{url}/api/chat/{message_id}/events"))
                assert resp.status_code == 200
                opened.append(resp)
            for url in (url_a, url_b):
                refused = await http.get(f"{url}/api/chat/{message_id}/events")
                assert refused.status_code == 429 and refused.json()["scope"] == "address", refused.text
                assert int(refused.headers["Retry-After"]) >= 1
            # The client goes away (no graceful end from the server): its place is given back.
            await opened[0].aclose()

            async def reopened() -> Any:
                attempt = http.stream("GET", f"{url_b}/api/chat/{message_id}/events")
                resp = await stack.enter_async_context(attempt)
                if resp.status_code == 200:
                    return resp
                await resp.aread()
                return None

            assert await until(reopened), "a closed stream's place was never given back"
    # Every stream closed: no place is left held.
    assert await until(lambda: _zcard(r, "supportmesh:ratelimit:streams:address:127.0.0.1", want=0))
    await r.aclose()


async def _zcard(r: Any, key: str, want: int) -> bool:
    return await r.zcard(key) == want


async def test_limiter_fails_open_when_redis_is_down(make_gateways, caplog) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # a port nothing listens on: Redis is down
    port = dead.getsockname()[1]
    limits = {"rate_limit_chat_address": "1/minute", "rate_limit_reads": "1/minute",
              "rate_limit_chat_customer": "1/minute"}
    (a,) = await make_gateways(1, **limits)
    # The limiter's Redis is down (the sessions' is not: the chat must not fail for another reason).
    await a.state.rate_limiter.close()
    a.state.rate_limiter = RateLimiter(a.state.gateway.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{port}/0", **limits}))
    errors = metrics.RATE_LIMITER_ERRORS.labels("rate_limit")._value.get()
    stream_errors = metrics.RATE_LIMITER_ERRORS.labels("stream_cap")._value.get()
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    with caplog.at_level(logging.WARNING, logger="supportmesh.gateway.ratelimit"):
        async with client(a, peer()) as c:
            for _ in range(3):
                assert (await c.post("/api/chat", json=chat_body(email), headers=ASYNC)).status_code == 202
                assert (await c.get("/api/sagas/unknown-id")).status_code == 404
        assert await a.state.rate_limiter.open_stream("/api/chat/{message_id}/events", _Request()) is None
    assert metrics.RATE_LIMITER_ERRORS.labels("rate_limit")._value.get() >= errors + 6
    assert metrics.RATE_LIMITER_ERRORS.labels("stream_cap")._value.get() == stream_errors + 1
    assert any("letting the request through" in rec.getMessage() for rec in caplog.records)
    dead.close()
    await a.state.rate_limiter.close()


class _Request:
    """The little of a request the stream cap reads (a guest from one address)."""

    client = type("Client", (), {"host": "10.9.9.9"})()
    headers = Headers()
    app = type("App", (), {"state": type("State", (), {})()})()  # no gateway: no customer, counted by address
