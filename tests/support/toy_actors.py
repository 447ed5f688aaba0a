"""Toy actors for the runtime tests and the runtime demo. Each handler call appends a line
`<actor> <message_id> <step> <attempt>` to the file named by `SUPPORTMESH_TOY_LOG` (when set), so tests can
count executions across processes. Behaviour is driven by the customer message:

- `fail-retry:N` → the `flaky` actor raises a RetryableError on its first N attempts;
- `fail-permanent` → `flaky` raises a PermanentError;
- `fail-always` → `flaky` always raises a RetryableError;
- `sleep:S` → the `slow` actor sleeps S seconds (long enough to be killed mid-step), and the `undo` actor
  takes S seconds to undo its (pretend) side effect;
- `transient` → the broken `response_aggregator` fails with a RetryableError (else a PermanentError);
- `wait:SIGNAL:SECONDS` → the `waiter` actor suspends the saga until SIGNAL or the timer; each run that a
  wait's end caused is logged as actor `waiter_resume`; with `twice` it waits a second time on the first wake.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from actors.base import Actor, PermanentError, RetryableError, StepContext, StepResult
from saga.actor import Wait
from actors.domain import Message


def note(actor: str, message: Message, attempt: int) -> None:
    """Append one execution line to the toy log (O_APPEND keeps lines whole across processes)."""
    path = os.environ.get("SUPPORTMESH_TOY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{actor} {message.message_id} {message.route.current_step} {attempt}\n")


class ToyActor(Actor):
    """A toy actor that also keeps the ids of the messages it handled, per instance (one per replica)."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    def note(self, message: Message, ctx: StepContext) -> None:
        """Count one handler call, in the shared log and on this replica."""
        self.handled.append(message.message_id)
        note(self.name, message, ctx.attempt)


def stamped(message: Message, actor: str, value: Any) -> dict[str, Any]:
    """A toy enrichment: the actor's mark added to `api_data`."""
    return {"api_data": {**message.payload.api_data, actor: value}}


class Upper(ToyActor):
    """Upper-cases the customer's message into api_data."""

    name = "upper"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        self.note(message, ctx)
        return stamped(message, self.name, message.payload.customer_message.upper())


class Count(ToyActor):
    """Counts the words."""

    name = "count"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        self.note(message, ctx)
        return stamped(message, self.name, len(message.payload.customer_message.split()))


class Done(ToyActor):
    """Marks the message done."""

    name = "done"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        self.note(message, ctx)
        return stamped(message, self.name, True)


class Flaky(ToyActor):
    """Fails as the customer message says."""

    name = "flaky"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        self.note(message, ctx)
        text = message.payload.customer_message
        if m := re.search(r"fail-retry:(\d+)", text):
            if ctx.attempt <= int(m.group(1)):
                raise RetryableError(f"transient failure on attempt {ctx.attempt}")
        if "fail-permanent" in text:
            raise PermanentError("this cannot work")
        if "fail-always" in text:
            raise RetryableError("still down")
        return stamped(message, self.name, ctx.attempt)


class Slow(ToyActor):
    """Sleeps as the customer message says (to be killed mid-step)."""

    name = "slow"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        self.note(message, ctx)
        if m := re.search(r"sleep:([\d.]+)", message.payload.customer_message):
            await asyncio.sleep(float(m.group(1)))
        return stamped(message, self.name, "slept")


class Undo(ToyActor):
    """Undoes a pretend side effect as compensation does: `compensation_started`, the undo (as long as the
    message says), `compensation_completed`."""

    name = "undo"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        self.note(message, ctx)
        effect = {"action": "refund", "order_id": "toy", "action_id": f"toy-{message.message_id}"}
        await ctx.record("compensation_started", effect, seq=1)
        if m := re.search(r"sleep:([\d.]+)", message.payload.customer_message):
            await asyncio.sleep(float(m.group(1)))
        await ctx.record("compensation_completed", effect, seq=1)
        return stamped(message, self.name, "undone")


class BrokenAggregator(ToyActor):
    """A response aggregator whose store is down: fails every time (transiently when the text says so)."""

    name = "response_aggregator"

    async def handle(self, message: Message, ctx: StepContext) -> None:
        self.note(message, ctx)
        if "transient" in message.payload.customer_message:
            raise RetryableError("history store unreachable")
        raise PermanentError("history store refuses the write")


class Catcher(ToyActor):
    """A toy error handler: keeps the error and ends the saga as escalated."""

    name = "catcher"
    kind = "router"

    async def handle(self, message: Message, ctx: StepContext) -> StepResult:
        self.note(message, ctx)
        error = message.payload.error
        return StepResult(
            enrichment=stamped(message, self.name, error.kind if error else None),
            remaining_route=[],
            outcome="escalated",
            reason="caught",
        )


class Waiter(ToyActor):
    """Waits for a signal (or its timer) as the customer message says; the run a wake causes records how the
    wait ended in `api_data`."""

    name = "waiter"

    async def handle(self, message: Message, ctx: StepContext) -> StepResult | dict[str, Any]:
        self.note(message, ctx)
        m = re.search(r"wait:([a-z_]+):([\d.]+)", message.payload.customer_message)
        assert m, "the waiter needs wait:SIGNAL:SECONDS"
        wakeup = ctx.wakeup
        if wakeup is None:
            return StepResult(wait=Wait(m.group(1), float(m.group(2)), {"asked": "toy", "n": 1}))
        note("waiter_resume", message, ctx.attempt)
        if "twice" in message.payload.customer_message and wakeup.wait_data.get("n") == 1:
            return StepResult(wait=Wait(m.group(1), float(m.group(2)), {"asked": "toy", "n": 2}))
        return stamped(message, self.name, {"kind": wakeup.kind, "signal": wakeup.signal, "payload": wakeup.payload,
                                            "wait_data": wakeup.wait_data, "waited_s": wakeup.waited_s})


class Noop(Actor):
    """Does nothing (benchmarks)."""

    name = "noop"

    async def handle(self, message: Message, ctx: StepContext) -> None:
        return None


def noop_class(index: int) -> type[Actor]:
    """A distinct no-op actor class named `noop<index>` (benchmarks chain several)."""
    return type(f"Noop{index}", (Noop,), {"name": f"noop{index}"})
