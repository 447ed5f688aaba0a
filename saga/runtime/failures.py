"""What happens when a step does not complete: retry (nak with backoff), the route's error handler, misrouted
and poison messages. A saga that cannot go on at all is failed by `saga.runtime.failing`."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from nats.aio.msg import Msg

from saga.errors import error_text
from saga.log import SagaEvent
from saga.protocol import MESSAGE_ID, SESSION_ID, ErrorInfo, Message, RouteError
from saga.replay import apply_redirect
from saga.retry import is_retryable
from saga.runtime import failing
from saga.runtime.core import Core

log = logging.getLogger("saga.runtime")

POISON_SAMPLE_BYTES = 512


async def failed(core: Core, msg: Msg, message: Message[Any], attempt: int, exc: Exception, elapsed: float) -> str:
    """The handler raised: nak for a retry with backoff while the budget lasts, else record `step_failed` and
    send the message to the route's error handler."""
    detail = error_text(exc)[:500]
    retryable = is_retryable(exc)
    if retryable and not core.policy.exhausted(attempt):
        delay = core.policy.delay(attempt)
        await core.record(message, "retry_scheduled", attempt=attempt,
                          data={"delay_s": round(delay, 3), "error": detail})
        core.hooks.on_retry(core.name)
        log.warning("step failed, retry in %.2fs: %s", delay, detail, extra=core.extra(message, attempt))
        await msg.nak(delay=delay)
        return "retried"
    kind = "retryable_exhausted" if retryable else "permanent"
    await core.record(message, "step_failed", attempt=attempt, duration_ms=elapsed * 1000,
                      data={"error": detail, "kind": kind, "retryable": retryable})
    log.error("step failed for good (%s): %s", kind, detail, extra=core.extra(message, attempt))
    await to_error_handler(core, message, kind=kind, detail=detail, attempts=attempt)
    await msg.ack()
    return "failed"


async def to_error_handler(core: Core, message: Message[Any], *, kind: str, detail: str, attempts: int,
                           actor: str | None = None) -> None:
    """Send the message to the route's error handler with `payload.error` set."""
    route = message.route
    handler = route.error_handler
    actor = actor or core.name
    if actor == handler or message.metadata.outcome == "failed":
        # The error handler itself failed for good, or the saga had already failed and this is the delivery
        # of its answer: nobody else can decide, so the saga is failed (and answered here).
        await failing.fail_saga(core, message, actor=actor, detail=detail, attempt=attempts)
        return
    error = ErrorInfo(
        actor=actor, step_index=route.current_step, kind=kind, detail=detail, attempts=attempts,
        failed_route=list(route.steps[route.current_step :]) if route.current_step < len(route.steps) else [],
    )
    try:
        new_route = route.with_remaining([handler])
    except RouteError as exc:
        # The route cannot take one more step (MAX_STEPS): the error handler is out of reach.
        await failing.fail_saga(core, message, actor=actor, detail=f"{detail}; no way to the error handler: {exc}",
                                attempt=attempts)
        return
    detour = {"from": route.steps, "to": new_route.steps, "reason": f"error:{kind}",
              "error": error.model_dump(mode="json")}
    await core.record(message, "route_changed", attempt=attempts, data=detour)
    await core.publish(apply_redirect(message, detour))


async def misrouted(core: Core, msg: Msg, message: Message[Any], attempt: int) -> None:
    """A message for another step: recorded, and sent to the error handler after the last step taken."""
    route = message.route
    expected = route.steps[route.current_step] if route.current_step < len(route.steps) else None
    detail = f"message for step {route.current_step} ({expected}) delivered to {core.name}"
    await core.record(message, "step_failed", attempt=attempt, data={"error": detail, "kind": "misrouted"})
    log.error("misrouted message: %s", detail, extra=core.extra(message, attempt))
    if core.name != route.error_handler:
        # Resume the route at the error handler, after the last step that really happened.
        taken = min(route.current_step, len(route.steps))
        fixed = message.model_copy(update={"route": route.model_copy(
            update={"steps": route.steps[:taken] + [core.name], "current_step": taken})})
        await to_error_handler(core, fixed, kind="misrouted", detail=detail, attempts=attempt)
    await msg.ack()


async def poison(core: Core, msg: Msg, exc: Exception) -> None:
    """A delivery that is not a valid Message: record it, terminate it (never redelivered).

    The record is filed under `poison-<actor>-<stream seq>`: the work queue drops a terminated message, and
    recovery finds the record from the MSG_TERMINATED advisory alone. It keeps what could be salvaged (the
    message id and session the message claims) so its saga can be answered."""
    seq = msg.metadata.sequence.stream
    salvaged = salvage_ids(msg.data)
    detail = error_text(exc)[:500]
    await core.saga.record(SagaEvent(
        message_id=poison_id(core.name, seq), kind="poison_message", actor=core.name, step_index=0,
        attempt=msg.metadata.num_delivered,
        data={"stream_seq": seq, "subject": msg.subject, "error": detail,
              "sample": msg.data[:POISON_SAMPLE_BYTES].decode("utf-8", "replace"), **salvaged},
    ))
    log.error("poison message terminated: %s", detail,
              extra={"actor": core.name, "message_id": salvaged.get("message_id", poison_id(core.name, seq))})
    await msg.term()


def poison_id(actor: str, stream_seq: int) -> str:
    """Where the record of a poison message is filed: found again from the stream sequence alone."""
    return f"poison-{actor}-{stream_seq}"


def salvage_ids(data: bytes) -> dict[str, str]:
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
