"""The engine's hooks (`saga.hooks.StepHooks`) for the support mesh: OpenTelemetry spans (a CONSUMER span per
step, a PRODUCER span per publish, W3C context in NATS headers, one trace per customer message) and the
Prometheus metrics of `observability.metrics`. The process wiring (`actors.runtime`) installs them."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.trace import Link, SpanKind, Status, StatusCode, get_current_span, use_span

from observability import metrics
from observability.logs import error_text
from observability.tracing import (
    current_trace_id,
    extract_context,
    inject_headers,
    messaging_attributes,
    messaging_span_name,
    tracer,
)


class ObservabilityHooks:
    """Tracing and metrics of the runtime and recovery. `actors`: the mesh's actors, whose recovery series
    the process running recovery creates at zero."""

    def __init__(self, actors: tuple[str, ...] = ()) -> None:
        self.actors = actors

    def step_span(self, actor: str, subject: str, message: Any, hop_id: str, attempt: int,
                  headers: dict[str, str], links: list[dict[str, str]] | None = None) -> AbstractContextManager[Any]:
        attrs = messaging_attributes("process", subject, message.message_id, hop_id, actor)
        attrs["supportmesh.step_index"] = message.step_index
        attrs["supportmesh.attempt"] = attempt
        span = tracer().start_span(messaging_span_name("process", subject), context=extract_context(headers),
                                   kind=SpanKind.CONSUMER, attributes=attrs, links=_links(links))
        # `use_span` is what `start_as_current_span` wraps: the span made current, ended on exit, an exception
        # recorded on it (one layer of generator-based context manager less, on two spans of every step).
        return use_span(span, end_on_exit=True)

    def publish_span(self, subject: str, message_id: str, hop_id: str) -> AbstractContextManager[Any]:
        attrs = messaging_attributes("publish", subject, message_id, hop_id)
        return use_span(tracer().start_span(messaging_span_name("publish", subject), kind=SpanKind.PRODUCER,
                                            attributes=attrs), end_on_exit=True)

    @contextlib.contextmanager
    def recovery_span(self, name: str, carrier: dict[str, str] | None, message: Any = None) -> Iterator[Any]:
        attrs = None if message is None else {"messaging.message.conversation_id": message.message_id,
                                              "supportmesh.step_index": message.step_index}
        parent = extract_context(carrier) if carrier else None
        with tracer().start_as_current_span(name, context=parent, attributes=attrs) as span:
            yield span

    def trace_headers(self) -> dict[str, str]:
        return inject_headers()

    def trace_id(self) -> str | None:
        return current_trace_id()

    def on_step_error(self, exc: BaseException) -> None:
        # The exception's text without the input values a validation error quotes (customer text).
        span = get_current_span()
        span.record_exception(exc, attributes={
            "exception.message": error_text(exc),
            "exception.stacktrace": "".join(traceback.format_tb(exc.__traceback__)) + error_text(exc)})
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))

    def on_step_start(self, actor: str) -> None:
        metrics.child(metrics.STEPS_IN_FLIGHT, actor).inc()

    def on_step_end(self, actor: str, seconds: float) -> None:
        metrics.observe(metrics.child(metrics.ACTOR_PROCESSING_SECONDS, actor), seconds)

    def on_step_outcome(self, actor: str, outcome: str) -> None:
        metrics.child(metrics.ACTOR_MESSAGES, actor, outcome).inc()
        metrics.child(metrics.STEPS_IN_FLIGHT, actor).dec()

    def on_retry(self, actor: str) -> None:
        metrics.RETRIES.labels(actor).inc()

    def on_redelivery(self, actor: str, source: str) -> None:
        metrics.REDELIVERIES.labels(actor, source).inc()

    def on_dead_letter(self, actor: str) -> None:
        metrics.DEAD_LETTERS.labels(actor).inc()

    def on_saga_event(self, kind: str) -> None:
        metrics.count_saga_event(kind)

    def on_backlog(self, actor: str, pending: int, ack_pending: int) -> None:
        metrics.CONSUMER_PENDING.labels(actor).set(pending)
        metrics.CONSUMER_ACK_PENDING.labels(actor).set(ack_pending)

    def on_storage(self, stream: str, used_bytes: int, max_bytes: int) -> None:
        metrics.JETSTREAM_BYTES.labels(stream).set(used_bytes)
        metrics.JETSTREAM_MAX_BYTES.labels(stream).set(max_bytes)

    def on_wait_started(self, actor: str, signal: str) -> None:
        metrics.WAITS_STARTED.labels(actor, signal).inc()

    def on_wait_ended(self, actor: str, signal: str, kind: str, waited_s: float) -> None:
        metrics.WAKES.labels(actor, signal, kind).inc()
        metrics.observe(metrics.WAIT_SECONDS.labels(actor, signal, kind), waited_s)

    def on_started(self, actor: str, *, recovery: bool = False) -> None:
        if recovery:
            metrics.init_recovery_series(self.actors)
        else:
            metrics.init_actor_series(actor)


def _links(carriers: list[dict[str, str]] | None) -> list[Link]:
    """Span links to the spans whose W3C context `carriers` hold (invalid ones are left out)."""
    out: list[Link] = []
    for carrier in carriers or ():
        context = get_current_span(extract_context(carrier)).get_span_context()
        if context.is_valid:
            out.append(Link(context))
    return out
