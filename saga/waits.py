"""Waits: a step suspends its saga until a named signal arrives or its deadline passes (`saga.actor.Wait`).

What is recorded (saga log, keys counted per wait at the step, `n` = 1, 2, ...):

- `wait_started` (`<id>.<step>.wait_started.<n>`): the signal, the deadline (epoch seconds), the handler's
  `Wait.data`, the step's message (what the resumed step runs on) and the waiting span's trace context.
- `signal_received` or `timer_fired`: both are written under ONE key per wait, `<id>.<step>.wake.<n>`, with
  KV `create`. That create is the decision: the first writer wins and the other can never be written, so a
  wait ends once, whatever races (two senders of the same signal, a signal and the timer, the sweeper).

After the decision the winner publishes the *resume*: the step's message again, to the waiting actor, with
the headers `Saga-Wake: <n>` and `Saga-Wait-Link: <traceparent of the waiting span>`, under the
`Nats-Msg-Id` `<id>:<step>:w<n>` (one per wait: JetStream drops a second publish). Every loser, and every
repair path, publishes the same resume again as long as the step has not moved on, so a crash between the
decision and the publish loses nothing: the next signal, the timer, a redelivery or the sweeper repairs it.

The durable timer is a JetStream per-message schedule in the timer stream (`saga.transport.timer_stream_config`:
JetStream refuses schedules in a stream that discards new messages, as the work stream does): a message on
`saga_timer.<prefix>.<id>.<step>.<n>` with `Nats-Schedule: @at <deadline>`, `Nats-Schedule-Target:
saga_fired.<prefix>.<actor>` and `Nats-TTL: never` (else the stream's max age would delete a schedule due later
than it). At the deadline the server stores it on the target, the work stream sources it onto
`<prefix>.<actor>`, and the actor's consumer receives it with our `Saga-Timer: <n>` header: the runtime claims
the wait (`timer_fired`) and publishes the resume, or drops the timer when a signal won. The recovery sweeper is the fallback: it fires a wait
whose deadline passed `wait_grace_s` ago itself, through the same claim, and republishes a decided resume
that no step took up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from opentelemetry import propagate

from saga.log import SagaEvent, SagaLog

WAKE_HEADER = "Saga-Wake"  # on a resume: the number of the wait that ended
TIMER_HEADER = "Saga-Timer"  # on a schedule, and so on the fired message: the number of the wait
LINK_HEADER = "Saga-Wait-Link"  # on a resume: the traceparent of the waiting step's span
TIMER_TOKEN = "saga_timer"  # schedules: saga_timer.<prefix>.<id>.<step>.<n>
FIRED_TOKEN = "saga_fired"  # fired timers: saga_fired.<prefix>.<actor>, sourced by the work stream
TRACE_KEYS = ("traceparent", "tracestate")

WakeKind = Literal["signal", "timer"]
WAKE_EVENT: dict[str, str] = {"signal": "signal_received", "timer": "timer_fired"}


def timer_subject(prefix: str, message_id: str, step: int, seq: int) -> str:
    """The schedule subject of one wait (in the timer stream)."""
    return f"{TIMER_TOKEN}.{prefix}.{message_id}.{step:04d}.{seq}"


RESUME_TOKEN = "_resume"  # resumes: <prefix>._resume.<actor> (an actor name never starts with "_")


def resume_subject(prefix: str, actor: str) -> str:
    """Where the resumes of `actor`'s waits are published: a subject of their own, so a process that may send
    signals (a gateway) may publish resumes without being able to publish a step; the runtime runs a resume on
    the message recorded with the wait, never on the body it was sent with."""
    return f"{prefix}.{RESUME_TOKEN}.{actor}"


def resume_id(message_id: str, step: int, seq: int) -> str:
    """The Nats-Msg-Id of the resume of one wait: however many times it is published, it is stored once."""
    return f"{message_id}:{step}:w{seq}"


def at_time(deadline: float) -> str:
    """`@at` time of a schedule: RFC 3339, UTC, whole seconds, rounded up (a timer never fires early)."""
    return datetime.fromtimestamp(math.ceil(deadline), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_carrier() -> dict[str, str]:
    """The current W3C trace context as headers (empty outside a trace)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_KEYS}


@dataclass(frozen=True)
class WaitRecord:
    """One wait, as the saga log has it: its `wait_started` and the event that ended it (None: still open)."""

    started: SagaEvent
    wake: SagaEvent | None

    @property
    def seq(self) -> int:
        return self.started.seq

    @property
    def step(self) -> int:
        return self.started.step_index

    @property
    def signal(self) -> str:
        return str(self.started.data.get("signal", ""))

    @property
    def deadline(self) -> float:
        return float(self.started.data.get("deadline", 0.0))

    @property
    def link(self) -> dict[str, str]:
        """The trace context of the waiting step's span."""
        trace = self.started.data.get("trace") or {}
        return {k: v for k, v in trace.items() if k in TRACE_KEYS and isinstance(v, str)}


def find_wait(history: list[SagaEvent], step: int | None = None, seq: int | None = None) -> WaitRecord | None:
    """The latest wait of the saga (or of `step`, or wait `seq` of `step`), with its wake when decided."""
    started = [e for e in history if e.kind == "wait_started" and (step is None or e.step_index == step)
               and (seq is None or e.seq == seq)]
    if not started:
        return None
    last = max(started, key=lambda e: (e.step_index, e.seq))
    wake = next((e for e in history if e.kind in ("signal_received", "timer_fired")
                 and e.step_index == last.step_index and e.seq == last.seq), None)
    return WaitRecord(last, wake)


def buffered_signal(history: list[SagaEvent], signal: str) -> SagaEvent | None:
    """A signal sent before the saga waited for it (`signal_buffered`) that no wait has taken yet."""
    buffered = next((e for e in history if e.kind == "signal_buffered" and e.data.get("signal") == signal), None)
    taken = any(e.kind == "signal_received" and e.data.get("source") == "buffered" and e.data.get("signal") == signal
                for e in history)
    return None if buffered is None or taken else buffered


async def take_buffered(saga: SagaLog, js: Any, prefix: str, message_id: str, signal: str) -> bool:
    """End the saga's open wait for `signal` with a signal buffered before it (True when one did). Both the
    sender (after buffering) and the waiting step (after recording its wait) call it, so whichever writes second
    sees the other's record; the wake's single-winner claim takes it once."""
    history = await saga.history(message_id)
    wait = find_wait(history)
    buffered = buffered_signal(history, signal)
    if wait is None or wait.wake is not None or wait.signal != signal or buffered is None:
        return False
    await wake(saga, js, prefix, history, wait, "signal", buffered.data.get("payload") or {}, source="buffered")
    return True


def moved_on(history: list[SagaEvent], wait: WaitRecord) -> bool:
    """True when the waiting step no longer needs this wait's resume: it completed, or waited again."""
    return any((e.kind == "step_completed" and e.step_index == wait.step)
               or (e.kind == "wait_started" and e.step_index == wait.step and e.seq > wait.seq) for e in history)


def wait_event(message: Any, actor: str, seq: int, signal: str, timeout_s: float, data: dict[str, Any],
               trace: dict[str, str], trace_id: str | None) -> SagaEvent:
    """The `wait_started` record of a step that suspends its saga."""
    deadline = time.time() + timeout_s
    return SagaEvent(
        message_id=message.message_id, kind="wait_started", actor=actor, step_index=message.route.current_step,
        seq=seq, trace_id=trace_id,
        data={"signal": signal, "deadline": round(deadline, 3), "timeout_s": timeout_s, "data": data,
              "message": message.model_dump(mode="json"), "trace": trace})


async def schedule_timer(js: Any, prefix: str, wait: SagaEvent) -> None:
    """Publish the durable timer of a wait (idempotent within the duplicate window; a second timer after it
    is harmless: its claim loses)."""
    headers = {"Nats-Schedule": f"@at {at_time(float(wait.data['deadline']))}",
               "Nats-Schedule-Target": f"{FIRED_TOKEN}.{prefix}.{wait.actor}", "Nats-TTL": "never",
               "Nats-Msg-Id": f"{wait.message_id}:{wait.step_index}:t{wait.seq}", TIMER_HEADER: str(wait.seq)}
    await js.publish(timer_subject(prefix, wait.message_id, wait.step_index, wait.seq),
                     orjson.dumps(wait.data["message"]), headers=headers)


async def publish_resume(js: Any, prefix: str, wait: WaitRecord) -> None:
    """Publish the resume of a decided wait to the waiting actor (deduplicated per wait). It continues the
    current trace when there is one (the sender's), else the waiting step's."""
    headers = current_carrier() or dict(wait.link)
    headers.update({"Nats-Msg-Id": resume_id(wait.started.message_id, wait.step, wait.seq),
                    WAKE_HEADER: str(wait.seq)})
    if "traceparent" in wait.link:
        headers[LINK_HEADER] = wait.link["traceparent"]
    await js.publish(resume_subject(prefix, wait.started.actor), orjson.dumps(wait.started.data["message"]),
                     headers=headers)


async def wake(saga: SagaLog, js: Any, prefix: str, history: list[SagaEvent], wait: WaitRecord, kind: WakeKind,
               payload: dict[str, Any] | None = None, *, source: str = "") -> Literal["accepted", "already_decided"]:
    """End `wait` with a signal or its timer: the single-winner decision (`create` of the wait's wake key),
    then the resume. A loser republishes the resume while the step has not moved on (repairing a winner that
    died between its decision and its publish)."""
    data: dict[str, Any] = {"signal": wait.signal, "payload": payload or {},
                            "waited_s": round(max(0.0, time.time() - wait.started.ts), 3)}
    if source:
        data["source"] = source
    won = wait.wake is None and await saga.record(SagaEvent(
        message_id=wait.started.message_id, kind=WAKE_EVENT[kind], actor=wait.started.actor,  # type: ignore[arg-type]
        step_index=wait.step, seq=wait.seq, trace_id=wait.started.trace_id, data=data))
    if won or not moved_on(history, wait):
        await publish_resume(js, prefix, wait)
    return "accepted" if won else "already_decided"


__all__ = ["LINK_HEADER", "TIMER_HEADER", "WAKE_HEADER", "WaitRecord", "at_time", "find_wait", "moved_on",
           "publish_resume", "resume_id", "resume_subject", "buffered_signal", "take_buffered", "schedule_timer", "timer_subject", "wait_event", "wake"]
