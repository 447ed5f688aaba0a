"""The commerce client over the wire (aiohttp, as the actors run it) against the real mock APIs served by
uvicorn: data, absence, refusals, the failures the runtime retries (5xx, timeouts, a dead server) as the error
types its retry policy classifies, and a client span with the route template, under the caller's span, and
never the path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors.base import PermanentError
from actors.commerce import CommerceClient
from mocks.app import create_app
from mocks.faults import Faults
from saga.retry import is_retryable
from config.settings import Settings
from supportmesh.natsserver import free_port

EMAIL = "user@example.com"


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    """The mock APIs on a loopback port; faults reset after each test by the tests that set them."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Faults({}, seed=1)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def client(base: str, timeout_s: float = 5) -> CommerceClient:
    return CommerceClient(Settings(customers_api_url=base, orders_api_url=base, tracking_api_url=base,
                                   api_timeout_s=timeout_s))


async def test_reads_data_and_absence(api: str) -> None:
    c = client(api)
    try:
        customer, orders = await asyncio.gather(c.customer(EMAIL), c.customer_orders(EMAIL))
        assert customer["id"] == "cust_001" and any(o["order_id"] == "12345" for o in orders)
        assert await c.order("no-such-order") is None and await c.customer("nobody@example.com") is None
        with pytest.raises(PermanentError):  # an empty path segment is refused before any call
            await c.order("..")
    finally:
        await c.close()


async def test_an_action_once_per_key_and_a_refusal_is_permanent(api: str) -> None:
    c = client(api)
    try:
        first = await c.act("refund", "44444", {"amount": 1}, "commerce-client-k1")
        assert (await c.act("refund", "44444", {"amount": 1}, "commerce-client-k1"))["action_id"] == first["action_id"]
        with pytest.raises(PermanentError) as refused:
            await c.act("refund", "44444", {"amount": 999_999}, "commerce-client-k2")
        assert str(refused.value).startswith("409 from POST /orders/{order_id}/refunds: ")
    finally:
        await c.close()


async def test_failures_are_the_errors_the_runtime_retries(api: str) -> None:
    c = client(api, timeout_s=0.3)
    admin = httpx.AsyncClient(base_url=api)
    try:
        await admin.put("/_admin/faults", json={"GET /orders/{order_id}": {"fail_first": 1}})
        with pytest.raises(httpx.HTTPStatusError) as failed:
            await c.order("12345")
        assert failed.value.response.status_code == 503 and is_retryable(failed.value)
        assert (await c.order("12345"))["order_id"] == "12345"  # the retry works
        await admin.put("/_admin/faults", json={"GET /orders/{order_id}": {"latency_ms": 2000}})
        with pytest.raises(httpx.TimeoutException) as slow:
            await c.order("12345")
        assert is_retryable(slow.value) and "12345" not in str(slow.value)
    finally:
        await admin.put("/_admin/faults", json={})
        await admin.aclose()
        await c.close()
    dead = client(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(httpx.TransportError) as refused:
            await dead.customer(EMAIL)
        assert is_retryable(refused.value) and EMAIL not in str(refused.value)
    finally:
        await dead.close()


async def test_client_span_names_the_route_template_under_the_callers_span(api: str, monkeypatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # this test's spans only
    c = client(api)
    try:
        with provider.get_tracer("test").start_as_current_span("process ecommerce.support.context_retriever"):
            await c.customer_orders(EMAIL)
    finally:
        await c.close()
    spans = exporter.get_finished_spans()
    span = next(s for s in spans if s.kind == trace.SpanKind.CLIENT)
    parent = next(s for s in spans if s.name.startswith("process "))
    assert span.name == "GET /customers/{email}/orders" and span.parent.span_id == parent.context.span_id
    assert span.attributes["url.template"] == "/customers/{email}/orders"
    assert str(span.attributes["url.full"]).endswith("/customers/{email}/orders")
    assert span.attributes["http.response.status_code"] == 200
    texts = [str(v) for v in span.attributes.values()] + [span.name]
    assert not [t for t in texts if "example.com" in t or "%40" in t], texts
