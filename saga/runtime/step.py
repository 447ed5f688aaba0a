"""One step, as a pipeline: reuse the recorded result → run the handler → record and forward (or suspend the
saga when the handler waits: `saga.runtime.waiting`).

`run_step` reads top to bottom as what happens to one delivery of a valid message; each stage is a short
function below it. Failures leave the pipeline for `saga.runtime.failures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.msg import Msg

from saga import transport, waits
from saga.actor import StepResult, Wakeup
from saga.errors import PermanentError, error_text
from saga.protocol import Message
from saga.replay import apply_step
from saga.runtime import failures, waiting
from saga.runtime.context import StepContext
from saga.runtime.core import Core
from saga.runtime.crash import crash_point

log = logging.getLogger("saga.runtime")


async def run_step(core: Core, msg: Msg, message: Message[Any], attempt: int) -> str:
    """Run one delivery of a valid message; returns its outcome (completed, memoized, retried, failed,
    misrouted; with waits: waiting, timer, stale, dropped)."""
    route = message.route
    if route.current_step >= len(route.steps) or route.current != core.name:
        await failures.misrouted(core, msg, message, attempt)
        return "misrouted"
    if not core.durable:
        return await run_volatile(core, msg, message, attempt)
    headers = msg.headers or {}
    if waits.TIMER_HEADER in headers:  # a wait's durable timer fired: not a run of the step
        return await waiting.timer_fired(core, msg, message, int(headers[waits.TIMER_HEADER]))
    wake_seq = int(headers.get(waits.WAKE_HEADER) or 0)
    if msg.subject == waits.resume_subject(core.app.subject_prefix, core.name):
        # Whoever sent it, a resume runs on the message recorded with its wait (or not at all).
        recorded = await waiting.recorded_message(core, message, wake_seq)
        if recorded is None:
            await msg.ack()
            return "dropped"
        message = recorded
    t0 = time.perf_counter()
    # No `step_started` record: the hop in the work stream is the record that the step was dispatched, and
    # JetStream's delivery count is its attempt. A delivery after the first records `redelivered` below.
    memo, waited = None, False
    # A redelivery, a resume, or a resumption by recovery (a hop id of its own): has the step run already?
    if attempt > 1 or wake_seq or headers.get("Nats-Msg-Id", "") != transport.msg_id(message):
        memo, waited = await recorded_result(core, message, attempt)
    if memo is not None:
        await forward(core, message, apply_step(message, memo), memo, attempt, record=False)
        await msg.ack()
        return "memoized"
    wakeup: Wakeup | None = None
    if wake_seq:
        resume = await waiting.resumed(core, msg, message, wake_seq, attempt)
        if isinstance(resume, str):
            return resume
        wakeup, _ = resume
    elif waited:  # the step suspended the saga already: do not run it again
        return await waiting.redelivered_while_waiting(core, msg, message)

    crash_point(core.name, "before_handler", attempt)
    try:
        result = await call_handler(core, msg, message, attempt, wakeup)
        if result.wait is not None:
            wait = waiting.check_waiting_result(result, core.settings.saga_ttl_s)
            return await waiting.suspend(core, msg, message, wait, wake_seq + 1)
        memo = memo_of(result)
        # Validates the enrichment and the route change: a bad result fails this step, not the next actor.
        next_message = apply_step(message, memo)
        crash_point(core.name, "after_handler", attempt)
    except Exception as exc:
        core.hooks.on_step_error(exc)
        return await failures.failed(core, msg, message, attempt, exc, time.perf_counter() - t0)

    await forward(core, message, next_message, memo, attempt, record=True, t0=t0)
    await msg.ack()
    return "completed"


async def recorded_result(core: Core, message: Message[Any], attempt: int) -> tuple[dict[str, Any] | None, bool]:
    """On a redelivery (crash, ack timeout, scheduled retry) or a resume: the step's recorded result when it
    already finished (it is reused instead of running the handler again), and whether the step ever waited;
    records a redelivery and its source (the start of every attempt after the first)."""
    step = message.route.current_step
    retried, done, waited = await asyncio.gather(
        core.saga.get_event(message.message_id, step, "retry_scheduled", attempt=attempt - 1),
        core.saga.get_event(message.message_id, step, "step_completed"),
        core.saga.get_event(message.message_id, step, "wait_started", seq=1),
    )
    if attempt > 1:
        source = "retry" if retried else "jetstream"
        await core.record_nowait(message, "redelivered", attempt=attempt, data={"source": source})
        core.hooks.on_redelivery(core.name, source)
    return (done.data if done is not None else None), waited is not None


async def call_handler(core: Core, msg: Msg, message: Message[Any], attempt: int,
                       wakeup: Wakeup | None = None) -> StepResult:
    """Run the actor's handler with a heartbeat; a processor's dict becomes a StepResult."""
    ctx = StepContext(core, message, msg, attempt, wakeup)
    interval = heartbeat_interval(core)
    beats: list[asyncio.Task[None]] = []
    # Most handlers end well within one interval: a timer, not a task per step, starts the heartbeat.
    timer = asyncio.get_running_loop().call_later(
        interval, lambda: beats.append(asyncio.create_task(heartbeat(core, msg, message, ctx, interval))))
    try:
        raw = await core.actor.handle(message, ctx)
    finally:
        timer.cancel()
        for beat in beats:
            beat.cancel()
    result = raw if isinstance(raw, StepResult) else StepResult(enrichment=dict(raw or {}))
    if result.remaining_route is not None and core.actor.kind != "router":
        raise PermanentError(f"{core.name} is a processor and may not rewrite the route")
    return result


def heartbeat_interval(core: Core) -> float:
    """How often a running handler's delivery is kept alive: three beats per ack wait (or stall limit)."""
    return max(0.2, min(core.ack_wait_s, core.settings.stall_after_s) / 3)


async def heartbeat(core: Core, msg: Msg, message: Message[Any], ctx: StepContext, interval: float) -> None:
    """Keep the delivery alive while the handler runs (a beat now, then every `interval`); while it
    compensates, keep the saga's state fresh too (undo calls may be retried for minutes without a new event,
    and the sweeper must not take a live compensation for a stalled saga)."""
    while True:
        with contextlib.suppress(Exception):
            await msg.in_progress()
        if ctx.compensating and core.durable:
            with contextlib.suppress(Exception):
                await core.mark_compensating(message)
        await asyncio.sleep(interval)


def memo_of(result: StepResult) -> dict[str, Any]:
    """What `step_completed` records: enough to rebuild the next message without the handler."""
    enrichment = {k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v)
                  for k, v in result.enrichment.items()}
    memo: dict[str, Any] = {"enrichment": enrichment}
    if result.remaining_route is not None:
        memo["remaining_route"] = list(result.remaining_route)
        memo["reason"] = result.reason
    if result.outcome is not None:
        memo["outcome"] = result.outcome
    return memo


async def forward(core: Core, message: Message[Any], next_message: Message[Any], memo: dict[str, Any],
                  attempt: int, *, record: bool, t0: float = 0.0) -> None:
    """Record the result (`record`) and publish the next hop together. A crash between the two is repaired by
    the redelivery: a missing record re-runs the step and its republish is deduplicated (Nats-Msg-Id); a
    missing publish is redone from the record without running the handler. A router's new route is in the
    record (`remaining_route`, `reason`): no write of its own (`route_changed` is the runtime's detours')."""
    if not record:
        await core.forward(next_message)
        return
    created, _ = await asyncio.gather(
        core.record(message, "step_completed", attempt=attempt, data=memo,
                    duration_ms=(time.perf_counter() - t0) * 1000),
        core.forward(next_message),
    )
    crash_point(core.name, "after_step_completed", attempt)
    if not created:
        log.warning("step finished twice; the first recorded result stands", extra=core.extra(message, attempt))


async def run_volatile(core: Core, msg: Msg, message: Message[Any], attempt: int) -> str:
    """The same step with the saga log off (benchmarks): no records, no memo, no recovery."""
    try:
        result = await call_handler(core, msg, message, attempt)
    except Exception as exc:
        await msg.term()
        log.error("step failed (saga log off): %s", error_text(exc), extra=core.extra(message, attempt))
        return "failed"
    await core.forward(apply_step(message, memo_of(result)))
    await msg.ack()
    return "completed"
