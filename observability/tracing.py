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


def setup_tracing(service_name: str, **_: Any) -> None:
    """Install the OpenTelemetry SDK for this process (implemented by the observability issue)."""
    return None
