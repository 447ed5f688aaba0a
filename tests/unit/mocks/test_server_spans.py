"""What an app of ours (the mock APIs here; the gateway is set up the same way) exports for one request: one
server span (FastAPI's own telemetry), named and attributed with the route template and the status, with the
route template in place of the request's path (it carries emails), and none for the metrics and health paths."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mocks.app import create_app
from mocks.faults import Faults


@pytest.fixture
def exporter(monkeypatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # this test's spans only
    return exporter


def summary(span) -> tuple:  # type: ignore[no-untyped-def]
    a = span.attributes
    return span.name, span.kind, a.get("http.route"), a.get("url.path"), a.get("http.response.status_code")


async def test_one_request_is_one_server_span_with_its_route_and_status_and_no_path(exporter) -> None:
    app = create_app(Faults({}, seed=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mocks") as client:
        found = await client.get("/customers/user@example.com/orders?since=user@example.com")
        missing = await client.get("/orders/99999")
        await client.get("/metrics")
        await client.get("/healthz")
    assert (found.status_code, missing.status_code) == (200, 404)
    spans = exporter.get_finished_spans()
    assert [summary(s) for s in spans] == [
        ("GET /customers/{email}/orders", trace.SpanKind.SERVER, "/customers/{email}/orders",
         "/customers/{email}/orders", 200),
        ("GET /orders/{order_id}", trace.SpanKind.SERVER, "/orders/{order_id}", "/orders/{order_id}", 404),
    ], [s.name for s in spans]
    assert spans[0].attributes["url.query"] == ""
    assert not any("user@example.com" in str(v) for s in spans for v in s.attributes.values())


async def test_an_injected_fault_and_an_unknown_path_keep_no_path_either(exporter) -> None:
    faults = Faults({"GET /customers/{email}": {"error_rate": 1.0}}, seed=1)
    app = create_app(faults)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mocks") as client:
        failed = await client.get("/customers/user@example.com")
        unknown = await client.get("/nowhere/user@example.com")
    assert (failed.status_code, unknown.status_code) == (503, 404)
    spans = exporter.get_finished_spans()
    assert [s.attributes.get("url.path") for s in spans] == ["/customers/{email}", "/{unmatched}"]
    # Answered before routing, the fault's span is still named by its route, as every routed request's is.
    assert (spans[0].name, spans[0].attributes.get("http.route")) == ("GET /customers/{email}", "/customers/{email}")
    assert not any("user@example.com" in str(v) for s in spans for v in s.attributes.values())
