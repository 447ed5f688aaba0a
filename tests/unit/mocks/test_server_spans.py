"""What an instrumented FastAPI app (the mock APIs here; the gateway is instrumented the same way) exports for
one request: one server span, with the route template and the status, and none of the ASGI instrumentation's
per-event `http send` / `http receive` spans (they cost CPU on every request and tell nothing more)."""

from __future__ import annotations

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mocks.app import create_app
from mocks.faults import Faults
from observability.tracing import instrument_fastapi


async def test_one_request_is_one_server_span_with_its_route_and_status(monkeypatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # this test's spans only
    app = create_app(Faults({}, seed=1))
    instrument_fastapi(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mocks") as client:
        found = await client.get("/customers/user@example.com/orders")
        missing = await client.get("/orders/99999")
    assert (found.status_code, missing.status_code) == (200, 404)
    spans = exporter.get_finished_spans()
    assert [(s.kind, s.attributes.get("http.route"), s.attributes.get("http.response.status_code",
                                                                       s.attributes.get("http.status_code")))
            for s in spans] == [(trace.SpanKind.SERVER, "/customers/{email}/orders", 200),
                                (trace.SpanKind.SERVER, "/orders/{order_id}", 404)], [s.name for s in spans]
