"""Tracing helpers: W3C trace context in NATS headers, one trace per customer message.

The runtime and the gateway only use the OpenTelemetry *API* here; `setup_tracing` installs the SDK
(and the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set). Without it every call is a no-op.

A process that exports no spans records none: its spans are non-recording (`exporting_sampler`), which still
carry the trace id from span to span, process to process and into every response, saga event and log line.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

TRACER_NAME = "supportmesh"


def tracer() -> trace.Tracer:
    """The supportmesh tracer of the current provider."""
    return _tracer_of(trace.get_tracer_provider())


@functools.lru_cache(maxsize=4)
def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    # Made once per provider: the SDK builds a new tracer at every `get_tracer` (about 5 % of a naive actor's
    # CPU when it was called per span). Before `setup_tracing` this is a proxy that follows the provider
    # installed later.
    return provider.get_tracer(TRACER_NAME)


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


def exports_spans(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is told where to send its spans (an OTLP endpoint)."""
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def exporting_sampler(environ: Mapping[str, str] = os.environ) -> Sampler | None:
    """The sampler of a process: None (the SDK's choice, `OTEL_TRACES_SAMPLER` or parent-based always-on) when
    it exports spans or a sampler is configured; otherwise one that records nothing, whatever the parent says
    (a client's `traceparent` marked sampled must not make a process record spans nobody reads). A span that no
    exporter will ever read costs about twice the CPU of a non-recording one (a step's two spans: 47 against
    20 us), and a non-recording span still has the trace id and a span id of its own: the trace id still reaches
    the response, every saga event and log line, and the next process (in `traceparent`, marked not sampled)."""
    if exports_spans(environ) or environ.get("OTEL_TRACES_SAMPLER"):
        return None
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    return ALWAYS_OFF


def setup_tracing(service_name: str, **_: Any) -> None:
    """Install the OpenTelemetry SDK for this process: `service.name`, W3C propagation, and an OTLP/HTTP
    exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set. Without an endpoint spans
    are non-recording (`exporting_sampler`): trace ids still exist for responses, saga events and logs.
    Idempotent."""
    global _provider_installed
    if _provider_installed:
        return
    import uuid

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({
        "service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
        "service.namespace": "supportmesh",
        "service.instance.id": uuid.uuid4().hex[:12],
    })
    provider = TracerProvider(resource=resource, sampler=exporting_sampler())
    if exports_spans():
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


# No personal data in spans: a request's path carries emails (the commerce APIs' /customers/{email}) and session
# ids, so HTTP spans carry the route template where the instrumentation would put the path.
# Message ids (random uuids) are not personal, but they are in no URL attribute either: the template is what
# groups requests, and the message id is on the saga's own spans (`messaging.message.conversation_id`).
# The httpx request extension (`extensions={URL_TEMPLATE: ...}`) naming the route template of a request's URL.
URL_TEMPLATE = "supportmesh.url_template"
# Paths without server spans (scraped and probed every few seconds).
UNTRACED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
UNMATCHED_ROUTE = "/{unmatched}"


def fastapi_telemetry() -> dict[str, Any]:
    """`FastAPI(telemetry=...)` of our apps: FastAPI's own OpenTelemetry server span per request (named and
    attributed with the route template once the route is chosen, W3C context from the request's headers), none
    for the health and metrics paths, and nothing else: no span per dependency, endpoint and serialization (three
    more per request), no OpenTelemetry metrics or logs (the processes have Prometheus metrics and JSON logs).

    FastAPI's native spans cost a request about a quarter less CPU than the contrib `FastAPIInstrumentor`, which
    matched the route a second time and wrapped the app in four more layers (issue 17). `RouteInServerSpan` keeps
    the request's path out of the span."""
    return {"operation_spans": False, "metrics": False, "logs": False,
            "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS}


class RouteInServerSpan:
    """ASGI middleware: the server span's `url.path` is the route template (`/customers/{email}`), never the path,
    and a query string is blanked (it may carry ids). Installed inside FastAPI's telemetry, whose span is the
    current one here: the path is overwritten at once, and the template is set when the response starts (or the
    app fails), before FastAPI ends the span."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        span = trace.get_current_span()
        if scope["type"] != "http" or not span.is_recording():
            await self.app(scope, receive, send)
            return
        span.set_attribute("url.path", UNMATCHED_ROUTE)  # a request that never answers keeps no path either
        if scope.get("query_string"):
            span.set_attribute("url.query", "")

        def set_route() -> None:
            span.set_attribute("url.path", getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE)

        async def send_with_route(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                set_route()
            await send(message)

        try:
            await self.app(scope, receive, send_with_route)
        except BaseException:
            set_route()  # the error middleware answers 500 after this, through FastAPI's telemetry
            raise


def name_server_span(method: str, template: str) -> None:
    """Name the current server span by its route, as FastAPI does once it chooses the route: for a request
    answered before routing (an injected fault of the mock APIs), which would otherwise be named by its method."""
    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"{method} {template}")
        span.set_attribute("http.route", template)


_litellm_instrumented = False


def instrument_litellm(*, log_content: bool) -> None:
    """LiteLLM's own OpenTelemetry callback (`otel`), on this process's tracer provider: every completion gets a
    `litellm_request` span (provider, tokens, cost) as a child of the caller's GenAI span, in the same trace.

    Message text reaches spans only when `log_content` is true (`litellm.turn_off_message_logging` otherwise).
    The callback is handed the global provider *object*: before `setup_tracing` that is OpenTelemetry's proxy,
    which forwards to the SDK provider once installed, so the order of set-up does not matter (LiteLLM would
    otherwise build a provider and exporter of its own). Idempotent; the content setting is re-applied."""
    global _litellm_instrumented
    import litellm

    litellm.turn_off_message_logging = not log_content
    if _litellm_instrumented:
        return
    # With a parent span in context and this unset, LiteLLM writes its attributes onto the *parent* span
    # from its logging task, after our span has ended (and they are lost). Forced: a child span is the design.
    os.environ["USE_OTEL_LITELLM_REQUEST_SPAN"] = "true"
    from litellm.integrations.opentelemetry import OpenTelemetry, OpenTelemetryConfig

    litellm_log = logging.getLogger("LiteLLM")
    level = litellm_log.level
    litellm_log.setLevel(logging.ERROR)  # it warns that its proxy server is not installed: not our case
    try:
        callback = OpenTelemetry(
            config=OpenTelemetryConfig(exporter="console", enable_metrics=False, enable_events=False,
                                       ignore_context_propagation=False),
            tracer_provider=trace.get_tracer_provider(),
        )
    finally:
        litellm_log.setLevel(level)
    litellm.callbacks.append(callback)
    _litellm_instrumented = True


def http_client_attributes(method: str, url: str, template: str) -> dict[str, Any]:
    """Attributes of the client span of an HTTP call made without instrumentation (`actors.commerce`): the
    origin and the route template where the URL would be (the path and query carry emails and ids)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"http.request.method": method, "url.full": f"{parts.scheme}://{parts.hostname}:{port}{template}",
            "url.template": template, "server.address": parts.hostname or "", "server.port": port}


def _scrub_client_span(span: Any, request: Any) -> None:
    """A client span's URL is its origin and the route template the caller named (`URL_TEMPLATE`); without
    one, the origin alone (never the path or query, which carry emails and ids)."""
    if not span.is_recording():
        return
    method, url, _, _, extensions = request
    template = (extensions or {}).get(URL_TEMPLATE)
    port = f":{url.port}" if url.port else ""
    safe = f"{url.scheme}://{url.host}{port}{template or ''}"
    attributes = getattr(span, "attributes", None) or {}
    for key in ("http.url", "url.full"):
        if key in attributes:
            span.set_attribute(key, safe)
    if template:
        span.set_attribute("url.template", template)
        span.update_name(f"{method.decode() if isinstance(method, bytes) else method} {template}")


async def _scrub_client_span_async(span: Any, request: Any) -> None:
    _scrub_client_span(span, request)


def instrument_httpx() -> None:
    """Client spans (and trace context propagation) for every httpx client of the process, with the route
    template in place of the request's path."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument(request_hook=_scrub_client_span,
                                         async_request_hook=_scrub_client_span_async)
