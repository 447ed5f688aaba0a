"""Sending a signal to a waiting saga (see `saga.waits` for the mechanism): callable from any process with a
NATS connection (its JetStream context) and a `SagaLog`, e.g. a front end answering a person's click.

    outcome = await send_signal(saga_log, js, message_id, "approval", {"approved": True},
                                subject_prefix=app.subject_prefix)

- "accepted": this call ended the wait; the waiting step runs again with `ctx.wakeup` (kind "signal").
- "already_decided": the wait had already been ended, by a signal or by its timer (exactly one wins).
- "not_waiting": the saga is not waiting for that signal (unknown, finished, or waiting for another one).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from saga.actor import check_signal
from saga.log import TERMINAL, SagaEvent, SagaLog
from saga.protocol import MESSAGE_ID
from saga.waits import find_wait, take_buffered, wake

SignalOutcome = Literal["accepted", "not_waiting", "already_decided"]


async def send_signal(saga_log: SagaLog, js: Any, message_id: str, signal: str, payload: dict[str, Any] | None = None,
                      *, subject_prefix: str, buffer: bool = False) -> SignalOutcome:
    """Deliver `signal` with `payload` (a JSON object) to the saga `message_id`, if it waits for it.

    With `buffer`, a running saga that does not wait for `signal` yet keeps it (`signal_buffered`, once per
    signal name): its next wait for that signal ends with it at once ("accepted"). That is how an answer that
    comes before the question's wait is recorded (a customer quicker than a step redelivered after a crash).

    Raises ValueError for a bad signal name or a payload that is not a JSON object; NATS errors (timeouts,
    a full bucket) propagate. Safe to call again after an error: a decision already recorded is not taken
    twice, and its resume is published again (deduplicated) when the step has not run yet."""
    check_signal(signal)
    payload = payload or {}
    try:
        if not isinstance(payload, dict):
            raise TypeError(type(payload).__name__)
        orjson.dumps(payload)  # a payload that is not JSON is refused here, not in the step
    except TypeError as exc:
        raise ValueError(f"a signal's payload must be a JSON object: {exc}") from None
    if not MESSAGE_ID.match(message_id):
        return "not_waiting"
    history = await saga_log.history(message_id)
    wait = find_wait(history)
    if wait is None or wait.signal != signal:
        return await _buffer(saga_log, js, message_id, signal, payload, subject_prefix) if buffer else "not_waiting"
    if wait.wake is None:
        state = await saga_log.state(message_id)
        if state is None or state.status in TERMINAL:
            return "not_waiting"  # the saga ended without this wait being decided (e.g. it was failed)
    return await wake(saga_log, js, subject_prefix, history, wait, "signal", payload)


async def _buffer(saga_log: SagaLog, js: Any, message_id: str, signal: str, payload: dict[str, Any],
                  prefix: str) -> SignalOutcome:
    state = await saga_log.state(message_id)
    if state is None or state.status in TERMINAL:
        return "not_waiting"
    kept = SagaEvent(message_id=message_id, kind="signal_buffered", actor="signal", step_index=state.step_index,
                     trace_id=state.trace_id, data={"signal": signal, "payload": payload})
    if not await saga_log.record(kept):
        return "already_decided"  # one was kept already: the first answer stands
    # The wait may have started between our read and our record: then it did not see this signal, take it now.
    await take_buffered(saga_log, js, prefix, message_id, signal)
    return "accepted"


__all__ = ["SignalOutcome", "send_signal"]
