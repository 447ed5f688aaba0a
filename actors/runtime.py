"""The durable actor runtime: everything an actor needs besides its own logic.

For each delivery from the actor's durable pull consumer the runtime
1. parses and validates the message (a malformed one is *poison*: recorded, terminated, never redelivered);
2. checks that the message is for this step (a misrouted one is recorded and sent to the error handler);
3. records `step_started` and moves `saga_state` forward (in parallel);
4. on a redelivery, looks for a recorded `step_completed` and reuses its enrichment instead of running the
   handler again (step memoization);
5. runs the handler, sending `in_progress` to JetStream while it runs;
6. on a retryable failure naks with exponential backoff (recording `retry_scheduled`), and when the budget is
   spent, or on a permanent failure, records `step_failed` and sends the message to the route's error handler;
7. records `step_completed` with the enrichment (and `route_changed` when a router rewrote the route), then
   publishes the next hop with `Nats-Msg-Id: <message_id>:<step>` (dedup of a republish after a crash), or
   finishes the saga, and acks.

Tracing (a CONSUMER span per step, a PRODUCER span per publish, W3C context in NATS headers) and metrics are
done here too, so actor modules stay free of plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from actors.base import Actor, FailureContext, PermanentError, StepResult
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
from saga import transport
from saga.log import TERMINAL, SagaEvent, SagaLog, SagaState, SagaStatus
from saga.protocol import (
    ANSWERING_ACTOR,
    MESSAGE_ID,
    SESSION_ID,
    ErrorInfo,
    Message,
    RouteError,
    subject_for,
)
from saga.replay import FAILED_DETOUR, apply_redirect, apply_step, replay
from saga.results import (
    ResultStore,
    failed_enrichment,
    fallback_result,
    recorded_ticket,
)
from saga.retry import RetryPolicy, is_retryable
from supportmesh.config import Settings, step_drain_s

log = logging.getLogger("supportmesh.runtime")

POISON_SAMPLE_BYTES = 512
# The sagas the sweeper watches: the ones still moving (or that should be).
SWEPT: frozenset[str] = frozenset({"running", "compensating"})


class StepContext:
    """What a handler may use while it runs one step (see `actors.base.StepContext`)."""

    def __init__(self, runtime: ActorRuntime, message: Message, msg: Msg, attempt: int) -> None:
        self._runtime = runtime
        self._message = message
        self._msg = msg
        self.actor = runtime.name
        self.attempt = attempt
        self.settings = runtime.settings
        self.saga = runtime.saga
        self.results = runtime.results
        # Set once this step recorded `compensation_started`: the heartbeat then keeps the saga's
        # `compensating` state fresh, so the sweeper leaves a long compensation alone.
        self.compensating = False
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"supportmesh.actor.{runtime.name}"),
            {"message_id": message.message_id, "actor": runtime.name, "step": message.step_index},
        )

    @property
    def trace_id(self) -> str | None:
        """The trace id of the customer message being handled."""
        return current_trace_id() or self._message.metadata.trace_id

    async def record(self, kind: str, data: dict[str, Any], *, seq: int = 0) -> bool:
        """Record a saga event of this step; False when the same fact was already recorded."""
        created = await self._runtime.record(self._message, kind, attempt=self.attempt, seq=seq, data=data)
        self.compensating = self.compensating or kind == "compensation_started"
        return created

    async def in_progress(self) -> None:
        """Reset JetStream's ack timer for this delivery."""
        with contextlib.suppress(Exception):
            await self._msg.in_progress()

    async def publish_reply(self, subject: str, data: bytes) -> None:
        """Publish on core NATS (the waiting gateway's reply subject)."""
        await self._runtime.nc.publish(subject, data, headers=inject_headers())


class ActorRuntime:
    """Runs one actor: its consumer, its saga bookkeeping, its retries."""

    def __init__(
        self,
        actor: Actor,
        settings: Settings,
        *,
        concurrency: int | None = None,
        ack_wait_s: float | None = None,
        policy: RetryPolicy | None = None,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        self.actor = actor
        self.name = actor.name
        self.settings = settings
        self.subject = subject_for(self.name)
        self.concurrency = concurrency or settings.actor_concurrency
        self.ack_wait_s = ack_wait_s or actor.ack_wait_s or settings.ack_wait_s
        self.policy = policy or RetryPolicy(
            max_attempts=actor.max_attempts or settings.max_attempts,
            base_s=settings.backoff_base_s,
            max_s=settings.backoff_max_s,
        )
        self.fetch_timeout_s = fetch_timeout_s
        # How long `stop` waits for steps in flight: the same formula sizes the pod's grace period (k8s).
        self.drain_timeout_s = step_drain_s(self.name, settings)
        self.durable = settings.saga_log_enabled
        self.nc: NATS
        self.js: JetStreamContext
        self.saga: SagaLog
        self.results: ResultStore
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._dlq_task: asyncio.Task[None] | None = None
        self._dlq_sub: Any = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self.ready = False

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare the stream and this actor's consumer, start the actor and the fetch loop."""
        self.nc = await transport.connect(
            self.settings,
            f"supportmesh-{self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=5,
        )
        self.js = self.nc.jetstream(timeout=10)
        await transport.ensure_stream(self.js, self.settings)
        self.saga = await SagaLog.open(self.js, ttl_s=self.settings.saga_ttl_s,
                                       log_max_bytes=self.settings.saga_log_max_bytes,
                                       state_max_bytes=self.settings.saga_state_max_bytes)
        self.results = await ResultStore.open(self.js, ttl_s=self.settings.saga_ttl_s,
                                              max_bytes=self.settings.chat_results_max_bytes)
        await self.actor.start(self.settings)
        await self._bind()
        self._loop_task = asyncio.create_task(self._fetch_loop(), name=f"{self.name}-fetch")
        self._backlog_task = asyncio.create_task(self._backlog_loop(), name=f"{self.name}-backlog")
        metrics.init_actor_series(self.name)
        if self.actor.handles_dead_letters:
            metrics.init_recovery_series()
        if self.actor.handles_dead_letters:
            await self._bind_dead_letters()
            self._dlq_task = asyncio.create_task(self._dead_letter_loop(), name=f"{self.name}-deadletters")
        if self.actor.sweeps_stalled_sagas:
            self._sweep_task = asyncio.create_task(self._sweep_loop(), name=f"{self.name}-sweeper")
        self.ready = True
        log.info("actor started", extra={"actor": self.name})

    async def _bind(self) -> None:
        config = transport.consumer_config(
            self.name,
            ack_wait_s=self.ack_wait_s,
            # One delivery more than the retry budget: if the last attempt's process dies, JetStream still
            # gives up (MAX_DELIVERIES advisory) instead of looping.
            max_deliver=self.policy.max_attempts + 1,
            max_ack_pending=self.settings.max_ack_pending,
        )
        await transport.ensure_consumer(self.js, self.settings, config)
        self._sub = await self.js.pull_subscribe_bind(self.name, stream=self.settings.stream_name)

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Graceful stop: no new fetches, finish in-flight steps (waiting up to `drain_timeout_s`, by default
        the longest step this actor can take, see `step_drain_s`), close the actor and the connection."""
        self.ready = False
        self._stopping.set()
        for background in (self._sweep_task, self._backlog_task):
            if background:
                background.cancel()
        for task in (self._loop_task, self._dlq_task):
            if task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=self.fetch_timeout_s + 2)
        if self._tasks:
            wait_s = self.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            await asyncio.wait(self._tasks, timeout=wait_s)
        with contextlib.suppress(Exception):
            await self.actor.stop()
        # In-flight steps are done, so flush and close; nats-py's drain() waits out its full timeout on
        # pull subscriptions.
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.nc.close()
        log.info("actor stopped", extra={"actor": self.name})

    async def run_until_stopped(self) -> None:
        """Start, then wait until `request_stop()` (e.g. on SIGTERM), then stop gracefully."""
        await self.start()
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        """Ask `run_until_stopped` to stop (signal-handler safe)."""
        self._stopping.set()

    # ---- fetching ---------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            free = 1
            # Take every free slot at once so a burst is fetched in one request.
            while free < self.concurrency and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            try:
                msgs = await self._sub.fetch(free, timeout=self.fetch_timeout_s)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except Exception as exc:  # connection loss, consumer deleted, server restarting
                msgs = []
                if not self._stopping.is_set():
                    log.warning("fetch failed: %s; rebinding", exc, extra={"actor": self.name})
                    await asyncio.sleep(0.5)
                    with contextlib.suppress(Exception):
                        await self._bind()
            for _ in range(free - len(msgs)):
                self._slots.release()
            for m in msgs:
                task = asyncio.create_task(self._process(m))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    # ---- one delivery -----------------------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = await self._handle_delivery(msg, started)
        except Exception:
            # Infrastructure trouble (NATS down mid-step): leave the message un-acked; JetStream redelivers
            # it after ack_wait and memoization makes the retry cheap.
            log.exception("step aborted; JetStream will redeliver", extra={"actor": self.name})
        finally:
            metrics.ACTOR_MESSAGES.labels(self.name, outcome).inc()

    async def _handle_delivery(self, msg: Msg, started: float) -> str:
        attempt = msg.metadata.num_delivered
        try:
            message = Message.from_bytes(msg.data)
        except Exception as exc:
            try:
                await self._poison(msg, exc)
            finally:
                self._observe(started)
            return "poison"

        parent = extract_context(dict(msg.headers or {}))
        attrs = messaging_attributes("process", self.subject, message.message_id, transport.msg_id(message),
                                     self.name)
        with tracer().start_as_current_span(
            messaging_span_name("process", self.subject), context=parent, kind=SpanKind.CONSUMER,
            attributes=attrs,
        ) as span:
            span.set_attribute("supportmesh.step_index", message.step_index)
            span.set_attribute("supportmesh.attempt", attempt)
            try:
                return await self._run_step(msg, message, attempt, span)
            finally:
                # Inside the span: the observation's exemplar carries the step's trace id.
                self._observe(started)

    def _observe(self, started: float) -> None:
        metrics.observe(metrics.ACTOR_PROCESSING_SECONDS.labels(self.name), time.perf_counter() - started)

    async def _run_step(self, msg: Msg, message: Message, attempt: int, span: trace.Span) -> str:
        route = message.route
        if route.current_step >= len(route.steps) or route.current != self.name:
            await self._misrouted(msg, message, attempt)
            return "misrouted"

        t0 = time.perf_counter()
        if not self.durable:
            return await self._run_step_volatile(msg, message, attempt)
        # `step_started` is informational: send it without waiting for its ack. Writes from one connection
        # reach JetStream in order, so it is stored before this step's `step_completed`. (`saga_state` changes
        # only on status transitions; the current step and the last event time are the saga log's.)
        await self.record_nowait(message, "step_started", attempt=attempt)
        return await self._execute(msg, message, attempt, span, t0)

    async def _execute(self, msg: Msg, message: Message, attempt: int, span: trace.Span, t0: float) -> str:
        route = message.route
        memo: dict[str, Any] | None = None
        if attempt > 1:
            # A redelivery (crash, ack timeout, scheduled retry): reuse the step if it already finished.
            retried, done = await asyncio.gather(
                self.saga.get_event(message.message_id, route.current_step, "retry_scheduled", attempt=attempt - 1),
                self.saga.get_event(message.message_id, route.current_step, "step_completed"),
            )
            source = "retry" if retried else "jetstream"
            await self.record_nowait(message, "redelivered", attempt=attempt, data={"source": source})
            metrics.REDELIVERIES.labels(self.name, source).inc()
            if done is not None:
                memo = done.data

        if memo is not None:
            next_message = apply_step(message, memo)
            await self._note_route_change(message, next_message, memo, attempt)
            await self._forward(next_message)
            await msg.ack()
            return "memoized"

        _crash_point(self.name, "before_handler", attempt)
        try:
            result = await self._call_handler(msg, message, attempt)
            memo = self._memo_of(result)
            # Validates the enrichment and the route change: a bad result fails this step, not the next actor.
            next_message = apply_step(message, memo)
            _crash_point(self.name, "after_handler", attempt)
        except Exception as exc:
            # The exception's text without the input values a validation error quotes (customer text).
            span.record_exception(exc, attributes={
                "exception.message": error_text(exc),
                "exception.stacktrace": "".join(traceback.format_tb(exc.__traceback__)) + error_text(exc)})
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            return await self._failed(msg, message, attempt, exc, time.perf_counter() - t0)
        await self._note_route_change(message, next_message, memo, attempt)
        # Record the result and publish the next hop together. A crash between the two is repaired by the
        # redelivery: a missing record re-runs the step and its republish is deduplicated (Nats-Msg-Id); a
        # missing publish is redone from the record without running the handler again.
        created, _ = await asyncio.gather(
            self.record(message, "step_completed", attempt=attempt, data=memo,
                        duration_ms=(time.perf_counter() - t0) * 1000),
            self._forward(next_message),
        )
        _crash_point(self.name, "after_step_completed", attempt)
        if not created:
            log.warning("step finished twice; the first recorded result stands", extra=self._extra(message, attempt))
        await msg.ack()
        return "completed"

    async def _note_route_change(self, message: Message, next_message: Message, memo: dict[str, Any],
                                 attempt: int) -> None:
        if memo.get("remaining_route") is not None:
            await self.record_nowait(
                message,
                "route_changed",
                attempt=attempt,
                data={"from": message.route.steps, "to": next_message.route.steps, "reason": memo.get("reason", "")},
            )

    async def _run_step_volatile(self, msg: Msg, message: Message, attempt: int) -> str:
        """The same step with the saga log off (benchmarks): no records, no memo, no recovery."""
        try:
            result = await self._call_handler(msg, message, attempt)
        except Exception as exc:
            await msg.term()
            log.error("step failed (saga log off): %s", error_text(exc), extra=self._extra(message, attempt))
            return "failed"
        await self._forward(apply_step(message, self._memo_of(result)))
        await msg.ack()
        return "completed"

    async def _call_handler(self, msg: Msg, message: Message, attempt: int) -> StepResult:
        ctx = StepContext(self, message, msg, attempt)
        heartbeat = asyncio.create_task(self._heartbeat(msg, message, ctx))
        try:
            raw = await self.actor.handle(message, ctx)
        finally:
            heartbeat.cancel()
        result = raw if isinstance(raw, StepResult) else StepResult(enrichment=dict(raw or {}))
        if result.remaining_route is not None and self.actor.kind != "router":
            raise PermanentError(f"{self.name} is a processor and may not rewrite the route")
        return result

    async def _heartbeat(self, msg: Msg, message: Message, ctx: StepContext) -> None:
        """Keep the delivery alive while the handler runs; while it compensates, keep the saga's state fresh
        too (undo calls may be retried for minutes without a new event, and the sweeper must not take a live
        compensation for a stalled saga)."""
        interval = max(0.2, min(self.ack_wait_s, self.settings.stall_after_s) / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()
            if ctx.compensating and self.durable:
                with contextlib.suppress(Exception):
                    await self._mark_compensating(message)

    @staticmethod
    def _memo_of(result: StepResult) -> dict[str, Any]:
        """What `step_completed` records: enough to rebuild the next message without the handler."""
        enrichment = {
            k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v)
            for k, v in result.enrichment.items()
        }
        memo: dict[str, Any] = {"enrichment": enrichment}
        if result.remaining_route is not None:
            memo["remaining_route"] = list(result.remaining_route)
            memo["reason"] = result.reason
        if result.outcome is not None:
            memo["outcome"] = result.outcome
        return memo

    async def _forward(self, message: Message) -> None:
        """Publish the next hop, or finish the saga when the route is done."""
        route = message.route
        if route.current_step < len(route.steps):
            await self._publish(message)
            return
        if not self.durable:
            return
        outcome = message.metadata.outcome
        status = "escalated" if outcome == "escalated" else "failed" if outcome == "failed" else "completed"
        last = route.current_step - 1
        await self.saga.record(
            SagaEvent(
                message_id=message.message_id,
                kind="saga_completed",
                actor=self.name,
                step_index=last,
                trace_id=message.metadata.trace_id or current_trace_id(),
                data={"status": status},
            )
        )
        await self.saga.set_state(
            message.message_id, status=status, step_index=last, actor=self.name, allow_reopen=True
        )

    async def _publish(self, message: Message, *, resume: int = 0) -> None:
        """Publish the message to its current step (`resume` > 0: a resumption by recovery, see msg_id)."""
        subject = subject_for(message.route.current)
        attrs = messaging_attributes("publish", subject, message.message_id, transport.msg_id(message, resume))
        with tracer().start_as_current_span(messaging_span_name("publish", subject), kind=SpanKind.PRODUCER,
                                            attributes=attrs):
            await transport.publish(self.js, message, inject_headers(), resume=resume)

    # ---- failures ---------------------------------------------------------------------------------

    async def _failed(self, msg: Msg, message: Message, attempt: int, exc: Exception, elapsed: float) -> str:
        detail = error_text(exc)[:500]
        retryable = is_retryable(exc)
        if retryable and not self.policy.exhausted(attempt):
            delay = self.policy.delay(attempt)
            await self.record(
                message, "retry_scheduled", attempt=attempt, data={"delay_s": round(delay, 3), "error": detail}
            )
            metrics.RETRIES.labels(self.name).inc()
            log.warning("step failed, retry in %.2fs: %s", delay, detail, extra=self._extra(message, attempt))
            await msg.nak(delay=delay)
            return "retried"
        kind = "retryable_exhausted" if retryable else "permanent"
        await self.record(
            message,
            "step_failed",
            attempt=attempt,
            duration_ms=elapsed * 1000,
            data={"error": detail, "kind": kind, "retryable": retryable},
        )
        log.error("step failed for good (%s): %s", kind, detail, extra=self._extra(message, attempt))
        await self._to_error_handler(message, kind=kind, detail=detail, attempts=attempt)
        await msg.ack()
        return "failed"

    async def _to_error_handler(self, message: Message, *, kind: str, detail: str, attempts: int,
                                actor: str | None = None) -> None:
        """Send the message to the route's error handler with `payload.error` set."""
        route = message.route
        handler = route.error_handler
        actor = actor or self.name
        if actor == handler or message.metadata.outcome == "failed":
            # The error handler itself failed for good, or the saga had already failed and this is the delivery
            # of its answer: nobody else can decide, so the saga is failed (and answered here).
            await self._fail_saga(message, actor=actor, detail=detail, attempt=attempts)
            return
        error = ErrorInfo(
            actor=actor,
            step_index=route.current_step,
            kind=kind,
            detail=detail,
            attempts=attempts,
            failed_route=list(route.steps[route.current_step :]) if route.current_step < len(route.steps) else [],
        )
        try:
            new_route = route.with_remaining([handler])
        except RouteError as exc:
            # The route cannot take one more step (MAX_STEPS): the error handler is out of reach.
            await self._fail_saga(message, actor=actor, detail=f"{detail}; no way to the error handler: {exc}",
                                  attempt=attempts)
            return
        detour = {"from": route.steps, "to": new_route.steps, "reason": f"error:{kind}",
                  "error": error.model_dump(mode="json")}
        await self.record(message, "route_changed", attempt=attempts, data=detour)
        await self._publish(apply_redirect(message, detour))

    async def _fail_saga(self, message: Message, *, actor: str, detail: str, attempt: int = 1,
                         data: dict[str, Any] | None = None, history: list[SagaEvent] | None = None) -> None:
        """The saga cannot go on (its error handler failed for good or keeps dying on it, recovery gave up, or
        it cannot reach its error handler): hand it to a human where this process can (the actor's
        `on_saga_failed` hook opens a ticket), record `saga_failed` with the ticket (or that there is none), and
        answer the customer honestly: a colleague follows up on the named ticket, or, without one, the message
        was recorded under its reference and the customer is asked to come back; each side effect is named as
        the saga history has it (kept, reversed, or not reversed).

        The answer goes through the response aggregator like any other (history rows, session state, result,
        reply; the route then ends with the saga `failed`), unless the aggregator is what fails: then it is
        stored for `GET /api/chat/{id}` and published to the waiting gateway from here, and the saga is marked
        failed. A failure of that delivery comes back here with the outcome `failed` and is answered directly,
        so nothing loops."""
        step = message.route.current_step
        if history is None:
            history = await self.saga.history(message.message_id)
        ticket = await self._failure_ticket(message, history, actor, detail)
        ticket_id = ticket["ticket_id"]
        await self.saga.record(SagaEvent(
            message_id=message.message_id, kind="saga_failed", actor=actor, step_index=step, attempt=attempt,
            trace_id=current_trace_id() or message.metadata.trace_id,
            data={"error": detail, **(data or {}), **ticket}))
        log.error("saga failed: %s (handoff ticket: %s)", detail, ticket_id or ticket["ticket"],
                  extra={"actor": self.name, "message_id": message.message_id,
                         "trace_id": message.metadata.trace_id})
        if not _answering_fails(message, actor) and await self._answer_through_aggregator(message, history, attempt,
                                                                                          ticket_id):
            return
        await self.saga.set_state(message.message_id, status="failed", step_index=step, actor=actor,
                                  allow_reopen=True)
        result = fallback_result(message, history, trace_id=current_trace_id(), ticket_id=ticket_id)
        # Create-only: a saga that already has an answer keeps it, and the customer is told once.
        if await self.results.save(result) and message.metadata.reply_subject:
            with contextlib.suppress(Exception):  # core NATS, best effort: the stored answer is the durable one
                await self.nc.publish(message.metadata.reply_subject, result.to_bytes(), headers=inject_headers())

    async def _failure_ticket(self, message: Message, history: list[SagaEvent], actor: str,
                              detail: str) -> dict[str, Any]:
        """The handoff ticket of a saga being failed, as `saga_failed` records it: `ticket_id` (None: no ticket
        exists, so the answer must not promise a colleague) and `ticket`, how it is known: `opened` by this
        process's actor (`on_saga_failed`, idempotent, so failing a saga twice opens one ticket), `recorded` in
        the saga log (opened by its escalation or an earlier failure), `failed` (the hook could not open one;
        `ticket_error` says why) or `none` (no hook in this process)."""
        hooked = type(self.actor).on_saga_failed is not Actor.on_saga_failed
        out: dict[str, Any] = {"ticket_id": None, "ticket": "failed" if hooked else "none"}
        if hooked:
            ctx = FailureContext(actor=actor, detail=detail, settings=self.settings, log=logging.LoggerAdapter(
                logging.getLogger(f"supportmesh.actor.{self.name}"),
                {"message_id": message.message_id, "actor": self.name, "trace_id": message.metadata.trace_id}))
            # Bounded: the answer must not wait on a hung API (a few of its timeouts, under the ack wait of the
            # failing step's delivery, which is not acked yet, with the default settings).
            try:
                ticket_id = await asyncio.wait_for(self.actor.on_saga_failed(message, history, ctx),
                                                   timeout=3 * self.settings.api_timeout_s)
            except Exception as exc:
                ticket_id = None
                out["ticket_error"] = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("no handoff ticket for the failed saga: %s", out["ticket_error"],
                            extra={"actor": self.name, "message_id": message.message_id,
                                   "trace_id": message.metadata.trace_id})
            if ticket_id:
                return {"ticket_id": str(ticket_id), "ticket": "opened"}
        known = recorded_ticket(history)
        if known:
            return {**out, "ticket_id": known, "ticket": "recorded"}
        return out

    async def _answer_through_aggregator(self, message: Message, history: list[SagaEvent], attempt: int,
                                         ticket_id: str | None) -> bool:
        """Route the failed saga to the response aggregator with its answer set and the outcome `failed`,
        recorded as a detour (`route_changed`, reason `saga_failed`) so recovery can replay it. False when the
        route cannot take the step, or this step's route already changed another way."""
        route = message.route
        try:
            new_route = route.with_remaining([ANSWERING_ACTOR])
        except RouteError:
            return False
        detour = {"from": route.steps, "to": new_route.steps, "reason": FAILED_DETOUR, "outcome": "failed",
                  "enrichment": failed_enrichment(message, history, ticket_id)}
        if not await self.record(message, "route_changed", attempt=attempt, data=detour):
            # Already recorded (this failure is handled a second time, e.g. after a crash): publish the
            # recorded detour again (its Nats-Msg-Id makes that a no-op when the first publish got through).
            recorded = await self.saga.get_event(message.message_id, route.current_step, "route_changed")
            if recorded is None or recorded.data.get("reason") != FAILED_DETOUR:
                return False
            detour = recorded.data
        await self._publish(apply_redirect(message, detour))
        return True

    async def _misrouted(self, msg: Msg, message: Message, attempt: int) -> None:
        route = message.route
        expected = route.steps[route.current_step] if route.current_step < len(route.steps) else None
        detail = f"message for step {route.current_step} ({expected}) delivered to {self.name}"
        await self.record(message, "step_failed", attempt=attempt, data={"error": detail, "kind": "misrouted"})
        log.error("misrouted message: %s", detail, extra=self._extra(message, attempt))
        if self.name != route.error_handler:
            # Resume the route at the error handler, after the last step that really happened.
            taken = min(route.current_step, len(route.steps))
            fixed = message.model_copy(
                update={"route": route.model_copy(update={"steps": route.steps[:taken] + [self.name],
                                                          "current_step": taken})}
            )
            await self._to_error_handler(fixed, kind="misrouted", detail=detail, attempts=attempt)
        await msg.ack()

    async def _poison(self, msg: Msg, exc: Exception) -> None:
        """A delivery that is not a valid Message: record it, terminate it (never redelivered).

        The record is filed under `poison-<actor>-<stream seq>`: the work queue drops a terminated message,
        and the dead-letter handler finds the record from the MSG_TERMINATED advisory alone. It keeps what
        could be salvaged (the message id and session the message claims) so its saga can be answered."""
        seq = msg.metadata.sequence.stream
        salvaged = _salvage_ids(msg.data)
        detail = error_text(exc)[:500]
        await self.saga.record(
            SagaEvent(
                message_id=poison_id(self.name, seq),
                kind="poison_message",
                actor=self.name,
                step_index=0,
                attempt=msg.metadata.num_delivered,
                data={
                    "stream_seq": seq,
                    "subject": msg.subject,
                    "error": detail,
                    "sample": msg.data[:POISON_SAMPLE_BYTES].decode("utf-8", "replace"),
                    **salvaged,
                },
            )
        )
        log.error("poison message terminated: %s", detail,
                  extra={"actor": self.name, "message_id": salvaged.get("message_id", poison_id(self.name, seq))})
        await msg.term()

    async def _backlog_loop(self, interval_s: float = 5.0) -> None:
        """Export the consumer's backlog (pending and ack-pending) for the dashboards and autoscalers (and, in
        the error handler, the storage use of every stream and bucket)."""
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.settings.stream_name, self.name)
                metrics.CONSUMER_PENDING.labels(self.name).set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.labels(self.name).set(info.num_ack_pending or 0)
            if self.actor.handles_dead_letters:  # one process kind exports the storage use of the whole mesh
                await self._export_storage()
            await asyncio.sleep(interval_s)

    async def _export_storage(self) -> None:
        """Bytes used and size limit of every stream and bucket (the storage alert compares the two)."""
        for stream in transport.storage_streams(self.settings):
            with contextlib.suppress(Exception):
                info = await self.js.stream_info(stream)
                metrics.JETSTREAM_BYTES.labels(stream).set(info.state.bytes or 0)
                metrics.JETSTREAM_MAX_BYTES.labels(stream).set(info.config.max_bytes or -1)

    # ---- dead letters (error handler only) -------------------------------------------------------

    async def _bind_dead_letters(self) -> None:
        await transport.ensure_deadletter_stream(self.js, self.settings)
        stream = transport.deadletter_stream_name(self.settings)
        config = ConsumerConfig(durable_name="deadletters", ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
                                max_deliver=5)
        await self.js.add_consumer(stream, config)
        self._dlq_sub = await self.js.pull_subscribe_bind("deadletters", stream=stream)

    async def _dead_letter_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await self._dlq_sub.fetch(10, timeout=self.fetch_timeout_s)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                log.warning("dead-letter fetch failed: %s", exc, extra={"actor": self.name})
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self._bind_dead_letters()
                continue
            for m in msgs:
                try:
                    await self._dead_letter(m)
                    await m.ack()
                except Exception:
                    log.exception("dead letter not handled; will retry", extra={"actor": self.name})
                    with contextlib.suppress(Exception):
                        await m.nak(delay=1.0)

    async def _dead_letter(self, advisory: Msg) -> None:
        """A message JetStream gave up on (MAX_DELIVERIES: its process died on every delivery) or one an
        actor terminated (poison). Route a real message to the error handler, answer what cannot go on, and
        never let anything loop."""
        adv = orjson.loads(advisory.data)
        seq, consumer = int(adv.get("stream_seq", 0)), str(adv.get("consumer", "?"))
        deliveries = int(adv.get("deliveries") or 0)
        metrics.DEAD_LETTERS.labels(consumer).inc()
        try:
            raw = await self.js.get_msg(self.settings.stream_name, seq)
        except NotFoundError:
            raw = None  # a work-queue stream already dropped it (e.g. a terminated message)
        terminated = ".MSG_TERMINATED." in advisory.subject
        if terminated:
            await self._poison_handled(consumer, seq, deliveries)
        elif raw is not None and raw.data:
            message: Message | None = None
            with contextlib.suppress(Exception):
                message = Message.from_bytes(raw.data)
            if message is not None:
                # Continue the customer message's trace: the dead hop's own headers carry it.
                parent = await self._saga_context(message.message_id, headers=dict(raw.headers or {}))
                with tracer().start_as_current_span(f"dead_letter {subject_for(consumer)}", context=parent):
                    await self._max_deliveries(message, consumer, seq, deliveries)
        if raw is not None:
            with contextlib.suppress(Exception):
                await self.js.delete_msg(self.settings.stream_name, seq)
        log.warning("dead letter from %s (stream seq %s, %s) handled", consumer, seq,
                    "terminated" if terminated else "max deliveries", extra={"actor": self.name})

    async def _max_deliveries(self, message: Message, consumer: str, seq: int, deliveries: int) -> None:
        """Every delivery of this step died with its process: the error handler decides, unless the error
        handler is the one dying (then the saga is failed and answered rather than looped)."""
        reason = f"{deliveries or '?'} deliveries to {consumer} ended without an answer"
        route = message.route
        await self.saga.record(SagaEvent(
            message_id=message.message_id, kind="dead_lettered", actor=consumer, step_index=route.current_step,
            trace_id=message.metadata.trace_id,
            data={"stream_seq": seq, "reason": "max_deliveries", "deliveries": deliveries or None},
        ))
        if route.current_step < len(route.steps) and route.current != route.error_handler:
            await self._to_error_handler(message, kind="dead_letter", detail=reason, attempts=deliveries,
                                         actor=consumer)
        else:
            await self._fail_saga(message, actor=consumer, detail=reason, attempt=max(deliveries, 1))

    async def _poison_handled(self, consumer: str, seq: int, deliveries: int) -> None:
        """A terminated (poison) message: note that recovery saw it. When its record (see `_poison`) names a
        saga that is still running, that saga lost its message and can never finish: it is failed and the
        customer answered, with the session and reply subject the saga log recorded at its start."""
        record_id = poison_id(consumer, seq)
        await self.saga.record(SagaEvent(message_id=record_id, kind="dead_lettered", actor=consumer, step_index=0,
                                         data={"stream_seq": seq, "reason": "terminated"}))
        record = await self.saga.get_event(record_id, 0, "poison_message", attempt=max(deliveries, 1))
        message_id = record.data.get("message_id") if record else None
        if not isinstance(message_id, str) or not MESSAGE_ID.match(message_id):
            return  # nothing names a saga: no one to answer
        state = await self.saga.state(message_id)
        if state is None or state.status in TERMINAL:
            return  # no saga of ours, or one that already ended (and was answered)
        history = await self.saga.history(message_id)
        message = replay(history)
        if message is None:
            return
        parent = await self._saga_context(message_id, history=history)
        with tracer().start_as_current_span(f"dead_letter {subject_for(consumer)}", context=parent):
            await self._fail_saga(message, actor=consumer, attempt=max(deliveries, 1),
                                  detail=f"poison message on {consumer}: {record.data.get('error', '')}"[:500],
                                  data={"reason": "poison", "poison_record": record.key}, history=history)

    async def _saga_context(self, message_id: str, *, headers: dict[str, str] | None = None,
                            history: list[SagaEvent] | None = None) -> otel_context.Context | None:
        """The trace context in which recovery moves a saga, so that it stays one trace: the W3C context of
        the hop's own headers, else the one recorded with `saga_started`; None when neither is known."""
        carrier = {k: v for k, v in (headers or {}).items() if k in transport.TRACE_HEADERS}
        if "traceparent" not in carrier:
            if history is not None:
                started = next((e for e in history if e.kind == "saga_started"), None)
            else:
                started = await self.saga.get_event(message_id, 0, "saga_started")
            data = started.data if started else {}
            carrier = {k: data[k] for k in transport.TRACE_HEADERS if isinstance(data.get(k), str)}
        return extract_context(carrier) if "traceparent" in carrier else None

    # ---- stalled sagas (error handler only) --------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep failed", extra={"actor": self.name})

    async def sweep_once(self, now: float | None = None) -> list[str]:
        """Resume sagas that stopped moving (`running` or `compensating`, no event and no state change for
        `stall_after_s`): rebuild the message from the saga log and publish its current step again, under an
        id of its own (the lost hop's id may still be in the duplicate window). After `max_sweeps`
        resumptions of one step the saga goes to the error handler, or, when it is stuck at the error handler
        itself, is failed and answered. A saga whose start was never recorded is marked failed. Returns the
        ids of the sagas it acted on."""
        now = now or time.time()
        acted: list[str] = []
        for state in await self.saga.states():
            if state.status not in SWEPT or now - state.updated_at < self.settings.stall_after_s:
                continue
            try:
                if await self._sweep_saga(state, now):
                    acted.append(state.message_id)
            except Exception:
                # One saga that cannot be swept (say, a start record that no longer parses) must not stop
                # the others from being swept.
                log.exception("sweeping saga failed", extra=_about(self.name, state))
        return acted

    async def _sweep_saga(self, state: SagaState, now: float) -> bool:
        """Resume (or fail) one saga whose state has not changed for the stall time; True when it acted."""
        stall = self.settings.stall_after_s
        history = await self.saga.history(state.message_id)
        if history and now - max(e.ts for e in history) < stall:
            return False  # the log moved even if the state record lagged behind
        message = replay(history)
        if message is None:
            await self._fail_unstarted(state, history, now - state.updated_at)
            return True
        if message.route.current_step >= len(message.route.steps):
            return False
        # One trace per customer message: the resumption continues the trace the saga started in.
        parent = await self._saga_context(message.message_id, history=history)
        subject = subject_for(message.route.current)
        with tracer().start_as_current_span(f"resume {subject}", context=parent,
                                            attributes={"messaging.message.conversation_id": message.message_id,
                                                        "supportmesh.step_index": message.step_index}):
            await self._resume_stalled(message, history, now - max(e.ts for e in history), state.status)
        return True

    async def _fail_unstarted(self, state: SagaState, history: list[SagaEvent], stalled_s: float) -> None:
        """A saga state with no recorded start: the gateway writes `saga_state` and `saga_started` at once and
        refuses the message (503) when either failed, so nothing ever ran and nobody waits for an answer. It
        can never be resumed (the first message is in `saga_started`): mark it failed, so it stops looking
        alive, and say so."""
        detail = (f"saga_started was never recorded ({len(history)} events, state unchanged for {stalled_s:.0f}s): "
                  "the gateway refused the message, nothing to resume or answer")
        await self.saga.record(SagaEvent(message_id=state.message_id, kind="saga_failed", actor=self.name,
                                         step_index=state.step_index, trace_id=state.trace_id,
                                         data={"error": detail, "reason": "not_started"}))
        await self.saga.set_state(state.message_id, status="failed", step_index=state.step_index,
                                  actor=state.actor or self.name)
        log.warning("saga never started: marked failed (%s)", detail, extra=_about(self.name, state))

    async def _resume_stalled(self, message: Message, history: list[SagaEvent], stalled_s: float,
                              status: SagaStatus) -> None:
        route = message.route
        step = route.current_step
        sweeps = sum(1 for e in history if e.kind == "redelivered" and e.data.get("source") == "sweeper"
                     and e.step_index == step)
        if sweeps >= self.settings.max_sweeps:
            detail = f"no progress for {self.settings.stall_after_s:.0f}s after {sweeps} resumptions"
            if route.current == route.error_handler:
                # Not even the error handler moves it: nobody else can, so fail it and answer.
                await self._fail_saga(message, actor=route.current, detail=detail, attempt=sweeps, history=history)
            else:
                await self._to_error_handler(message, kind="stalled", attempts=sweeps, actor=route.current,
                                             detail=detail)
            return
        await self.saga.record(SagaEvent(
            message_id=message.message_id, kind="redelivered", actor=route.current, step_index=step,
            seq=sweeps + 1, trace_id=current_trace_id() or message.metadata.trace_id,
            data={"source": "sweeper", "stalled_s": round(stalled_s, 1)}))
        metrics.REDELIVERIES.labels(route.current, "sweeper").inc()
        # The status stays what it was (a compensating saga is still compensating); the state's time moves on.
        await self.saga.set_state(message.message_id, status=status, step_index=step, actor=route.current)
        await self._publish(message, resume=sweeps + 1)
        log.warning("resumed stalled saga at step %s (%s)", step, route.current,
                    extra={"actor": self.name, "message_id": message.message_id,
                           "trace_id": message.metadata.trace_id})

    # ---- saga events ------------------------------------------------------------------------------

    async def record(
        self,
        message: Message,
        kind: str,
        *,
        attempt: int = 1,
        seq: int = 0,
        data: dict[str, Any] | None = None,
        duration_ms: float | None = None,
    ) -> bool:
        """Record an event of the message's current step; False when it was already recorded. Recording
        `compensation_started` also marks the saga `compensating` (status transitions live here), even when
        the event was already there: a retried step repairs a transition its dead process did not make."""
        if not self.durable:
            return True
        created = await self.saga.record(self._event(message, kind, attempt, seq, data, duration_ms))
        if kind == "compensation_started":
            await self._mark_compensating(message)
        return created

    async def _mark_compensating(self, message: Message) -> None:
        """The saga's side effects are being undone (refused, and left alone, once the saga has ended)."""
        await self.saga.set_state(message.message_id, status="compensating", step_index=message.route.current_step,
                                  actor=self.name)

    async def record_nowait(
        self, message: Message, kind: str, *, attempt: int = 1, data: dict[str, Any] | None = None
    ) -> None:
        """Record an informational event without waiting for JetStream's ack (see SagaLog.record_nowait)."""
        if not self.durable:
            return
        await self.saga.record_nowait(self._event(message, kind, attempt, 0, data, None))

    def _event(self, message: Message, kind: str, attempt: int, seq: int, data: dict[str, Any] | None,
               duration_ms: float | None) -> SagaEvent:
        return SagaEvent(
            message_id=message.message_id,
            kind=kind,  # type: ignore[arg-type]
            actor=self.name,
            step_index=message.route.current_step,
            attempt=attempt,
            seq=seq,
            duration_ms=round(duration_ms, 3) if duration_ms is not None else None,
            trace_id=current_trace_id() or message.metadata.trace_id,
            data=data or {},
        )

    def _extra(self, message: Message, attempt: int) -> dict[str, Any]:
        return {"actor": self.name, "message_id": message.message_id, "step": message.step_index,
                "attempt": attempt}


def _about(actor: str, state: SagaState) -> dict[str, Any]:
    """Log fields of a line about a swept saga: written outside its trace, so its trace id is given."""
    return {"actor": actor, "message_id": state.message_id, "trace_id": state.trace_id}


def _answering_fails(message: Message, actor: str) -> bool:
    """True when the failed saga's answer cannot go through the response aggregator: it is the one failing
    (now, or in the failure the error handler was handling), its answer is already being delivered, or the
    route has no current step to detour from."""
    error = message.payload.error
    return (actor == ANSWERING_ACTOR or message.metadata.outcome == "failed"
            or (error is not None and error.actor == ANSWERING_ACTOR)
            or message.route.current_step >= len(message.route.steps))


def _crash_point(actor: str, point: str, attempt: int) -> None:
    """Chaos hook: `SUPPORTMESH_CRASH_POINT=<actor>:<point>` makes the process die right there (like
    kill -9: no cleanup, no ack) on the first attempt — or on every attempt with `<actor>:<point>:always` —
    to prove what the saga log recovers."""
    wanted = os.environ.get("SUPPORTMESH_CRASH_POINT")
    if wanted and (wanted == f"{actor}:{point}:always" or (wanted == f"{actor}:{point}" and attempt == 1)):
        log.error("crash point %s reached: exiting", wanted, extra={"actor": actor})
        os._exit(137)


def poison_id(actor: str, stream_seq: int) -> str:
    """Where the record of a poison message is filed: found again from the stream sequence alone."""
    return f"poison-{actor}-{stream_seq}"


def _salvage_ids(data: bytes) -> dict[str, str]:
    """The message id and session id a malformed message claims, when they can be read safely."""
    try:
        doc = orjson.loads(data)
    except Exception:
        return {}
    if not isinstance(doc, dict):
        return {}
    found: dict[str, str] = {}
    for key, pattern in (("message_id", MESSAGE_ID), ("session_id", SESSION_ID)):
        value = doc.get(key)
        if isinstance(value, str) and pattern.match(value):
            found[key] = value
    return found
