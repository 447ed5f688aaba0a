"""Tracing helpers: W3C trace context in NATS headers, one trace per customer message.

The runtime and the gateway only use the OpenTelemetry *API* here; `setup_tracing` installs the SDK
(and the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set). Without it every call is a no-op.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

TRACER_NAME = "supportmesh"


def tracer() -> trace.Tracer:
    """The supportmesh tracer."""
    return trace.get_tracer(TRACER_NAME)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the current trace context (traceparent/tracestate), merged into `headers`."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> otel_context.Context:
    """The trace context carried by a NATS message's headers."""
    return propagate.extract(headers or {})


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


_provider_installed = False


def setup_tracing(service_name: str, **_: Any) -> None:
    """Install the OpenTelemetry SDK for this process: `service.name`, W3C propagation, and an OTLP/HTTP
    exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set. Without an endpoint spans
    are still created, so trace ids exist for responses, saga events and logs. Idempotent."""
    global _provider_installed
    if _provider_installed:
        return
    import os
    import uuid

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({
        "service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
        "service.namespace": "supportmesh",
        "service.instance.id": uuid.uuid4().hex[:12],
    })
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _provider_installed = True


def shutdown_tracing() -> None:
    """Flush and stop span export (at process exit)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown:
        shutdown()


def messaging_span_name(operation: str, destination: str) -> str:
    """Span name of a messaging operation, as the conventions have it: `{operation} {destination}`."""
    return f"{operation} {destination}"


def messaging_attributes(operation: str, destination: str, message_id: str, hop_id: str,
                         consumer_group: str | None = None) -> dict[str, Any]:
    """OpenTelemetry messaging semantic-convention attributes of a NATS publish or process span.

    `messaging.message.id` is the hop's own id (its `Nats-Msg-Id`, `<message_id>:<step>`); the customer
    message that every hop of the saga belongs to is `messaging.message.conversation_id`."""
    attrs: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.destination.name": destination,
        "messaging.operation.type": "send" if operation == "publish" else operation,
        "messaging.operation.name": operation,
        "messaging.message.id": hop_id,
        "messaging.message.conversation_id": message_id,
    }
    if consumer_group:
        attrs["messaging.consumer.group.name"] = consumer_group
    return attrs


def instrument_fastapi(app: Any) -> None:
    """Server spans for every HTTP request of a FastAPI app (health and metrics paths excluded)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/metrics,/healthz,/readyz")


def instrument_httpx() -> None:
    """Client spans (and trace context propagation) for every httpx client of the process."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()
