"""The runtime's side of waits (`saga.waits`): suspending a step, the fired timer, the resume of a step whose
wait ended, and a plain redelivery of a step that waits already."""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg

from saga import waits
from saga.actor import StepResult, Wait, Wakeup
from saga.errors import PermanentError
from saga.log import SagaEvent
from saga.protocol import Message
from saga.runtime.core import Core

log = logging.getLogger("saga.runtime")


def check_waiting_result(result: StepResult, retention_s: float) -> Wait:
    """The wait of a result that suspends the saga; a PermanentError when it also tries to complete the step
    (enrichment, route change or outcome: those belong to the run that ends the wait), or when it would outlast
    `retention_s` (the saga log's TTL: its wait record, its state and its running-index entry would be gone at
    its end, and no timer or sweep would resume it)."""
    assert result.wait is not None
    if result.enrichment or result.remaining_route is not None or result.outcome is not None:
        raise PermanentError("a step that waits may not also return an enrichment, a route change or an outcome")
    if result.wait.timeout_s >= retention_s:
        raise PermanentError(f"a wait of {result.wait.timeout_s:g} s would outlast the saga log, which keeps records "
                             f"for {retention_s:g} s (saga_ttl_s)")
    return result.wait


async def suspend(core: Core, msg: Msg, message: Message[Any], wait: Wait, seq: int) -> str:
    """Suspend the saga at this step: state `waiting` first (so a decided wait always finds it waiting and
    moves it on), then `wait_started`, then the durable timer, then the ack. A crash in between is repaired:
    before the record, by the sweeper (a waiting state with no wait past its deadline is resumed as stalled);
    after it, by the redelivery (which finds the wait and schedules the timer again) or the sweeper's timer."""
    step = message.route.current_step
    event = waits.wait_event(message, core.name, seq, wait.signal, wait.timeout_s, wait.data,
                             core.hooks.trace_headers(), core.hooks.trace_id() or message.metadata.trace_id)
    moved = await core.saga.set_state(message.message_id, status="waiting", step_index=step, actor=core.name,
                                      wait=(wait.signal, seq, float(event.data["deadline"])))
    if moved is None:  # the saga ended meanwhile (failed by recovery): nothing to wait for
        await msg.ack()
        return "dropped"
    await core.saga.record(event)
    await waits.schedule_timer(core.js, core.app.subject_prefix, event)
    core.hooks.on_wait_started(core.name, wait.signal)
    # The signal may have come first (sent while the saga was still on its way to this wait): take it now.
    await waits.take_buffered(core.saga, core.js, core.app.subject_prefix, message.message_id, wait.signal)
    await msg.ack()
    log.info("step waits for %s (%.1fs)", wait.signal, wait.timeout_s, extra=core.extra(message, 1))
    return "waiting"


async def timer_fired(core: Core, msg: Msg, message: Message[Any], seq: int) -> str:
    """A wait's schedule fired: claim the wait for the timer and publish the resume, or drop the timer when a
    signal won (a loser republishes the resume while the step has not run it). Acked only after that, so a
    crash in between redelivers the timer and the claim repairs itself."""
    history = await core.saga.history(message.message_id)
    wait = waits.find_wait(history, message.route.current_step, seq)
    if wait is not None:
        await waits.wake(core.saga, core.js, core.app.subject_prefix, history, wait, "timer", source="schedule")
    await msg.ack()
    return "timer"


async def recorded_message(core: Core, message: Message[Any], seq: int) -> Message[Any] | None:
    """The message recorded with wait `seq` of the step `message` names, for a delivery on the resume subject;
    None (drop it) when it carries no wait number or names no recorded wait."""
    if seq < 1:
        log.warning("a message on the resume subject without a wait number: dropped", extra=core.extra(message, 1))
        return None
    wait = waits.find_wait(await core.saga.history(message.message_id), message.route.current_step, seq)
    if wait is None:
        log.warning("a resume of a wait that was never recorded: dropped", extra=core.extra(message, 1))
        return None
    return core.app.message_type.model_validate(wait.started.data["message"])


async def resumed(core: Core, msg: Msg, message: Message[Any], seq: int,
                  attempt: int) -> tuple[Wakeup, int] | str:
    """A resume delivery of wait `seq` whose step has not completed (the step pipeline memoizes that case
    first): the Wakeup to run the handler with (and the wait's number), or "stale" when the handler must not
    run (the step waited again since, or nothing was decided)."""
    step = message.route.current_step
    history = await core.saga.history(message.message_id)
    wait = waits.find_wait(history, step, seq)
    if wait is None or wait.wake is None or waits.moved_on(history, wait):
        await msg.ack()
        return "stale"
    # Two copies of a resume (a republished one that JetStream stored again, one sent by hand) may be fetched at
    # once: the first delivery of a copy claims the wait's resumption, and a first delivery that finds it claimed
    # is dropped. A redelivery (attempt > 1: the claimant died) runs, so a crash never strands the step.
    claim = SagaEvent(message_id=message.message_id, kind="redelivered", actor=core.name, step_index=step,
                      seq=seq, trace_id=message.metadata.trace_id, data={"source": "wake"})
    if attempt == 1 and not await core.saga.record(claim):
        await msg.ack()
        return "stale"
    await core.saga.set_state(message.message_id, status="running", step_index=step, actor=core.name)
    kind = "signal" if wait.wake.kind == "signal_received" else "timer"
    waited = float(wait.wake.data.get("waited_s", 0.0))
    if attempt == 1:
        core.hooks.on_wait_ended(core.name, wait.signal, kind, waited)
    payload = wait.wake.data.get("payload") or {}
    return Wakeup(kind=kind, signal=wait.signal, payload=dict(payload), waited_s=waited,
                  wait_data=dict(wait.started.data.get("data") or {})), seq


async def redelivered_while_waiting(core: Core, msg: Msg, message: Message[Any]) -> str:
    """A plain delivery of a step that waits already (JetStream's redelivery of the message it suspended on,
    or a resumption by recovery): the handler does not run again. The open wait gets its timer scheduled again
    (the first may never have been published); a decided one gets its resume published again."""
    history = await core.saga.history(message.message_id)
    wait = waits.find_wait(history, message.route.current_step)
    if wait is not None and wait.wake is None:
        await waits.schedule_timer(core.js, core.app.subject_prefix, wait.started)
    elif wait is not None and not waits.moved_on(history, wait):
        await waits.publish_resume(core.js, core.app.subject_prefix, wait)
    await msg.ack()
    return "waiting"
