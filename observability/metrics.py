"""Prometheus metrics of every supportmesh process. Names are `supportmesh_*`; labels are bounded
(actor names, outcomes, event kinds, models), never message or session ids."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Resolve milliseconds (the mesh's per-hop costs) as well as seconds (LLM calls, deadlines).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)

ACTOR_PROCESSING_SECONDS = Histogram(
    "supportmesh_actor_processing_seconds",
    "Time an actor spends on one step, from receipt to ack (handler and runtime work).",
    ["actor"],
    buckets=LATENCY_BUCKETS,
)
ACTOR_MESSAGES = Counter(
    "supportmesh_actor_messages_total",
    "Steps handled by an actor, by outcome (completed, memoized, retried, failed, poison, misrouted).",
    ["actor", "outcome"],
)
STEPS_IN_FLIGHT = Gauge("supportmesh_steps_in_flight", "Deliveries an actor process is running now.", ["actor"])
RETRIES = Counter("supportmesh_retries_total", "Step retries scheduled (nak with backoff).", ["actor"])
REDELIVERIES = Counter(
    "supportmesh_redeliveries_total",
    "Steps delivered again (source: jetstream after a crash or timeout, escalation_router, sweeper).",
    ["actor", "source"],
)
SAGA_EVENTS = Counter("supportmesh_saga_events_total", "Saga log events written, by kind.", ["kind"])
COMPENSATIONS = Counter("supportmesh_compensations_total", "Side effects undone by compensation.", ["action"])
ESCALATIONS = Counter("supportmesh_escalations_total", "Sagas handed to a human, by reason.", ["reason"])
DEAD_LETTERS = Counter(
    "supportmesh_dead_letters_total", "Messages that exhausted deliveries or were terminated.", ["actor"]
)
CHAT_LATENCY_SECONDS = Histogram(
    "supportmesh_chat_latency_seconds",
    "End-to-end chat latency at the gateway, by final status.",
    ["status"],
    buckets=LATENCY_BUCKETS,
)
GATEWAY_UNAVAILABLE = Counter(
    "supportmesh_gateway_unavailable_total",
    "Requests answered 503 because NATS, Redis or SQLite did not answer in time, by route template.",
    ["route"],
)
RATE_LIMITED = Counter(
    "supportmesh_gateway_rate_limited_total",
    "Requests refused with 429 by a rate limit or the open-stream cap, by route template and scope "
    "(address, customer).",
    ["route", "scope"],
)
RATE_LIMITER_ERRORS = Counter(
    "supportmesh_gateway_rate_limiter_errors_total",
    "Limiter checks that could not reach Redis and let the request through (the limiter fails open).",
    ["check"],
)
OPEN_STREAMS = Gauge("supportmesh_gateway_open_streams", "Event streams this gateway serves now.")
CHATS_IN_FLIGHT = Gauge("supportmesh_chats_in_flight", "Chats the gateway is waiting on.")
# Hand-overs (a person has the conversation): the open ones are shared state (Redis), so every gateway reports
# the same count when it last looked (each queue read, chat to an agent, reply and close): take the max.
HANDOVERS_OPEN = Gauge("supportmesh_handovers_open", "Sessions a person has taken over, as last counted.")
HANDOVER_MESSAGES = Counter("supportmesh_handover_messages_total",
                            "Messages of hand-over conversations, by sender (customer, agent).", ["sender"])
HANDOVER_DURATION_SECONDS = Histogram(
    "supportmesh_handover_duration_seconds", "How long a session stayed with a person (on close).",
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400),
)
LLM_LATENCY_SECONDS = Histogram(
    "supportmesh_llm_latency_seconds", "LLM call latency by model.", ["model", "purpose"], buckets=LATENCY_BUCKETS
)
LLM_TOKENS = Counter("supportmesh_llm_tokens_total", "LLM tokens by model and kind (prompt, completion).",
                     ["model", "kind"])
LLM_FALLBACKS = Counter("supportmesh_llm_fallbacks_total", "Calls that fell back to the local model.", ["model"])
# Waits (a step suspends its saga until a signal or its durable timer): sagas waiting now, by signal, are
# `sum by (signal) (supportmesh_waits_started_total) - sum by (signal) (supportmesh_wakes_total)` (a wait may
# start in one process and end in another, so no process can keep a gauge of them).
WAITS_STARTED = Counter("supportmesh_waits_started_total", "Sagas suspended by a step until a signal or its timer.",
                        ["actor", "signal"])
WAKES = Counter("supportmesh_wakes_total", "Waits ended, by kind (signal, timer).", ["actor", "signal", "kind"])
WAIT_SECONDS = Histogram("supportmesh_wait_seconds", "How long a saga waited, by signal and how the wait ended.",
                         ["actor", "signal", "kind"], buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600))
# What people decided about pending actions: kind (confirmation, approval), outcome (yes, no, other, approved,
# denied, timeout).
DECISIONS = Counter("supportmesh_decisions_total", "Decisions on actions that waited for a person.",
                    ["kind", "outcome"])
CONSUMER_PENDING = Gauge("supportmesh_consumer_pending", "Messages waiting in an actor's consumer.", ["actor"])
CONSUMER_ACK_PENDING = Gauge(
    "supportmesh_consumer_ack_pending", "Messages delivered to an actor and not yet acked.", ["actor"]
)
JETSTREAM_BYTES = Gauge(
    "supportmesh_jetstream_bytes", "Bytes stored in a JetStream stream or KV bucket (KV_<bucket>).", ["stream"]
)
JETSTREAM_MAX_BYTES = Gauge(
    "supportmesh_jetstream_max_bytes", "Size limit of a JetStream stream or KV bucket (-1: none).", ["stream"]
)
GATEWAY_RESPONSES = Counter(
    "supportmesh_gateway_responses_total", "Gateway responses by route template and status class (2xx..5xx).",
    ["route", "code"],
)
MOCK_API_LATENCY_SECONDS = Histogram(
    "supportmesh_mock_api_latency_seconds", "Mock commerce API latency by route.", ["route", "method"],
    buckets=LATENCY_BUCKETS,
)


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: the hot paths (every step, every saga event) ask for the same
    few series all the time, and `labels()` validates and locks at every call. (No series is ever removed.)"""
    return metric.labels(*labels)


def observe(histogram_child, value: float) -> None:  # type: ignore[no-untyped-def]
    """Observe a histogram value with the current trace id as exemplar (links a latency spike to its trace)."""
    from observability.tracing import current_trace_id

    trace_id = current_trace_id()
    histogram_child.observe(value, exemplar={"trace_id": trace_id} if trace_id else None)


def count_saga_event(kind: str) -> None:
    """One saga event written (the saga log's `on_recorded`)."""
    child(SAGA_EVENTS, kind).inc()


def init_saga_event_series() -> None:
    """Every saga event kind, at zero, in every process that writes saga events. A counter series that first
    appears at 1 hides that first event from `increase()` and `rate()` (there is no earlier sample)."""
    from saga.log import EVENT_KINDS

    for kind in sorted(EVENT_KINDS):
        SAGA_EVENTS.labels(kind)


def init_actor_series(actor: str) -> None:
    """Create an actor's label sets at start, so dashboards show zeros instead of no data (and so that the
    first increment of a counter is seen by `increase()`)."""
    init_saga_event_series()
    for outcome in ("completed", "memoized", "retried", "failed", "poison", "misrouted", "error", "waiting",
                    "timer", "stale", "dropped"):
        ACTOR_MESSAGES.labels(actor, outcome)
    RETRIES.labels(actor)
    for source in ("jetstream", "retry", "sweeper"):
        REDELIVERIES.labels(actor, source)
    DEAD_LETTERS.labels(actor)
    ACTOR_PROCESSING_SECONDS.labels(actor)
    STEPS_IN_FLIGHT.labels(actor)
    CONSUMER_PENDING.labels(actor)
    CONSUMER_ACK_PENDING.labels(actor)


def init_recovery_series(actors: tuple[str, ...] | list[str] = ()) -> None:
    """Label sets of the recovery counters (the process running recovery). Dead letters and sweeper
    redeliveries of every actor (`actors`: the mesh's, named by the wiring) are counted there: without a zero
    to start from, an actor's first one would be a new series at 1, and `increase()` would show 0."""
    for actor in actors:
        DEAD_LETTERS.labels(actor)
        REDELIVERIES.labels(actor, "sweeper")
    for action in ("refund", "cancel", "replacement"):
        COMPENSATIONS.labels(action)
    for reason in ("critical_sentiment", "low_confidence", "guardrail_failed", "needs_approval", "handoff", "error"):
        ESCALATIONS.labels(reason)


def init_gateway_series() -> None:
    """Label sets of the gateway's chat latency (and of the saga events it writes)."""
    init_saga_event_series()
    for status in ("resolved", "escalated", "processing"):
        CHAT_LATENCY_SECONDS.labels(status)
    for check in ("rate_limit", "stream_cap"):
        RATE_LIMITER_ERRORS.labels(check)
    for sender in ("customer", "agent"):
        HANDOVER_MESSAGES.labels(sender)
