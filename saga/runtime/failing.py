"""Failing a saga for good: hand it to a person where this process can (the actor's `on_saga_failed` opens a
ticket), record `saga_failed`, and answer honestly through the application's answering step, or directly
when that step is what fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from saga.actor import Actor, FailureContext
from saga.log import SagaEvent
from saga.protocol import Message, RouteError
from saga.replay import FAILED_DETOUR, apply_redirect
from saga.runtime.core import Core

log = logging.getLogger("saga.runtime")


async def fail_saga(core: Core, message: Message[Any], *, actor: str, detail: str, attempt: int = 1,
                    data: dict[str, Any] | None = None, history: list[SagaEvent] | None = None) -> None:
    """The saga cannot go on (its error handler failed for good or keeps dying on it, recovery gave up, or it
    cannot reach its error handler): open a handoff ticket where this process can, record `saga_failed` with
    the ticket (or that there is none), and answer: through the answering step like any other answer (the
    route then ends with the saga `failed`), unless that step is what fails: then the answer is stored and
    published from here, and the saga is marked failed. A failure of that delivery comes back here with the
    outcome `failed` and is answered directly, so nothing loops."""
    step = message.route.current_step
    if history is None:
        history = await core.saga.history(message.message_id)
    ticket = await failure_ticket(core, message, history, actor, detail)
    ticket_id = ticket["ticket_id"]
    await core.saga.record(SagaEvent(
        message_id=message.message_id, kind="saga_failed", actor=actor, step_index=step, attempt=attempt,
        trace_id=core.hooks.trace_id() or message.metadata.trace_id,
        data={"error": detail, **(data or {}), **ticket}))
    log.error("saga failed: %s (handoff ticket: %s)", detail, ticket_id or ticket["ticket"],
              extra={"actor": core.name, "message_id": message.message_id, "trace_id": message.metadata.trace_id})
    if not answering_fails(core, message, actor) and await answer_through_route(core, message, history, attempt,
                                                                                ticket_id):
        return
    await core.saga.set_state(message.message_id, status="failed", step_index=step, actor=actor, allow_reopen=True)
    result = core.app.failed_result(message, history, trace_id=core.hooks.trace_id(), ticket_id=ticket_id)
    # Create-only: a saga that already has an answer keeps it, and the waiter is told once.
    if await core.results.save(result) and message.metadata.reply_subject:
        with contextlib.suppress(Exception):  # core NATS, best effort: the stored answer is the durable one
            await core.nc.publish(message.metadata.reply_subject, orjson.dumps(result.model_dump(mode="json")),
                                  headers=core.hooks.trace_headers())


async def failure_ticket(core: Core, message: Message[Any], history: list[SagaEvent], actor: str,
                         detail: str) -> dict[str, Any]:
    """The handoff ticket of a saga being failed, as `saga_failed` records it: `ticket_id` (None: no ticket
    exists, so the answer must not promise a person) and `ticket`, how it is known: `opened` by this process's
    actor (`on_saga_failed`, idempotent, so failing a saga twice opens one ticket), `recorded` in the saga log
    (opened earlier), `failed` (the hook could not open one; `ticket_error` says why) or `none` (no hook in
    this process)."""
    hooked = type(core.actor).on_saga_failed is not Actor.on_saga_failed
    out: dict[str, Any] = {"ticket_id": None, "ticket": "failed" if hooked else "none"}
    if hooked:
        ctx = FailureContext(actor=actor, detail=detail, settings=core.settings, log=logging.LoggerAdapter(
            logging.getLogger(f"supportmesh.actor.{core.name}"),
            {"message_id": message.message_id, "actor": core.name, "trace_id": message.metadata.trace_id}))
        # Bounded: the answer must not wait on a hung API (a few of its timeouts, under the ack wait of the
        # failing step's delivery, which is not acked yet, with the default settings).
        try:
            async with asyncio.timeout(3 * core.settings.api_timeout_s):
                ticket_id = await core.actor.on_saga_failed(message, history, ctx)
        except Exception as exc:
            ticket_id = None
            out["ticket_error"] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("no handoff ticket for the failed saga: %s", out["ticket_error"],
                        extra={"actor": core.name, "message_id": message.message_id,
                               "trace_id": message.metadata.trace_id})
        if ticket_id:
            return {"ticket_id": str(ticket_id), "ticket": "opened"}
    known = core.app.recorded_ticket(history)
    if known:
        return {**out, "ticket_id": known, "ticket": "recorded"}
    return out


async def answer_through_route(core: Core, message: Message[Any], history: list[SagaEvent], attempt: int,
                               ticket_id: str | None) -> bool:
    """Route the failed saga to the answering step with its answer set and the outcome `failed`, recorded as
    a detour (`route_changed`, reason `saga_failed`) so recovery can replay it. False when the route cannot
    take the step, or this step's route already changed another way."""
    route = message.route
    try:
        new_route = route.with_remaining([core.app.answering_actor])
    except RouteError:
        return False
    detour = {"from": route.steps, "to": new_route.steps, "reason": FAILED_DETOUR, "outcome": "failed",
              "enrichment": core.app.failed_answer(message, history, ticket_id)}
    if not await core.record(message, "route_changed", attempt=attempt, data=detour):
        # Already recorded (this failure is handled a second time, e.g. after a crash): publish the recorded
        # detour again (its Nats-Msg-Id makes that a no-op when the first publish got through).
        recorded = await core.saga.get_event(message.message_id, route.current_step, "route_changed")
        if recorded is None or recorded.data.get("reason") != FAILED_DETOUR:
            return False
        detour = recorded.data
    await core.publish(apply_redirect(message, detour))
    return True


def answering_fails(core: Core, message: Message[Any], actor: str) -> bool:
    """True when the failed saga's answer cannot go through the answering step: it is the one failing (now,
    or in the failure the error handler was handling), its answer is already being delivered, or the route
    has no current step to detour from."""
    answering = core.app.answering_actor
    error = getattr(message.payload, "error", None)
    return (actor == answering or message.metadata.outcome == "failed"
            or (error is not None and error.actor == answering)
            or message.route.current_step >= len(message.route.steps))
