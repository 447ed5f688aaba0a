"""Rebuilding a message from its saga log: the runtime applies a step's recorded result to move a message
on, and recovery replays the recorded results from the first message to resume a saga where it stopped."""

from __future__ import annotations

from typing import Any, TypeVar

from saga.log import SagaEvent
from saga.protocol import Message

M = TypeVar("M", bound=Message[Any])

# The `route_changed` reason of a failed saga's detour to its answering step.
FAILED_DETOUR = "saga_failed"


def apply_step(message: M, memo: dict[str, Any]) -> M:
    """The message after its current step, from that step's `step_completed` record: enriched, route
    rewritten if the step was a router that asked for it, moved on by one step."""
    out = message.enriched(memo.get("enrichment") or {})
    route = out.route
    if memo.get("remaining_route") is not None:
        new_route = route.with_remaining(memo["remaining_route"])
        route.check_rewrite(new_route)
        route = new_route
    metadata = out.metadata
    if memo.get("outcome"):
        metadata = metadata.model_copy(update={"outcome": memo["outcome"]})
    return out.model_copy(update={"route": route.advanced(), "metadata": metadata})


def apply_redirect(message: M, detour: dict[str, Any]) -> M:
    """The message after the runtime sent its current step elsewhere, from that step's `route_changed`
    record (`to`: the whole new route; `error`, `enrichment`, `outcome`: what the detour adds), moved on by
    one step. The runtime publishes exactly this, and recovery replays it from the record."""
    if detour.get("error"):
        message = message.enriched({"error": detour["error"]})
    if detour.get("enrichment"):
        message = message.enriched(detour["enrichment"])
    metadata = message.metadata
    if detour.get("outcome"):
        metadata = metadata.model_copy(update={"outcome": detour["outcome"]})
    route = message.route.model_copy(update={"steps": list(detour.get("to") or [])})
    return message.model_copy(update={"route": route.advanced(), "metadata": metadata})


def is_detour(event: SagaEvent) -> bool:
    """A `route_changed` written by the runtime for a failure (to the error handler, or a failed saga's
    answer), as opposed to a router's rewrite recorded with its `step_completed`."""
    reason = str(event.data.get("reason", ""))
    return event.kind == "route_changed" and (reason.startswith("error:") or reason == FAILED_DETOUR)


def initial_message(history: list[SagaEvent], message_type: type[M]) -> M | None:
    """The message the saga started with (recorded in `saga_started`), as the application's message type."""
    for event in history:
        if event.kind == "saga_started" and "message" in event.data:
            return message_type.model_validate(event.data["message"], strict=True)
    return None


def replay(history: list[SagaEvent], message_type: type[M]) -> M | None:
    """The message as it was after the last completed step, by replaying every recorded step result on the
    first message. None when the saga's start was not recorded, or the log does not fit the route (the
    recorded results of error-handler detours, and the detour of a failed saga to its answer, are applied
    like any other step)."""
    message = initial_message(history, message_type)
    if message is None:
        return None
    completed = {e.step_index: e for e in history if e.kind == "step_completed"}
    detours = {e.step_index: e for e in history if is_detour(e)}
    failures = {e.step_index: e for e in history if e.kind in ("step_failed", "dead_lettered", "saga_failed")}
    while message.route.current_step < len(message.route.steps):
        step = message.route.current_step
        if step in completed and completed[step].actor == message.route.current:
            message = apply_step(message, completed[step].data)
        elif step in detours and step in failures:
            # The step failed for good and the runtime sent the message on (error handler, or answer).
            message = apply_redirect(message, detours[step].data)
        else:
            break
    return message
