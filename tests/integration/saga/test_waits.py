"""Waits with real servers: a step suspends its saga until a signal or its durable timer (JetStream
schedule), exactly one of them wins, and a wait survives kill -9 of nats-server and of the waiting actor. The
sweeper fires a wait whose schedule is missing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest

from actors.domain import SUBJECT_PREFIX
from saga import waits
from saga.log import SagaEvent, SagaLog, SagaState
from saga.signals import send_signal
from saga.transport import publish

from tests.support.harness import Harness, kinds
from tests.support.toy_actors import Catcher, Done, Waiter

pytestmark = pytest.mark.asyncio


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (generous deadlines: machines differ 3x)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = await check()
        except Exception:  # a server restarting
            got = None
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


async def waiting(h: Harness, message_id: str, seq: int = 1, timeout: float = 30.0) -> SagaState:
    """The saga's state once it waits (wait number `seq`) and its wait is recorded."""
    async def check() -> SagaState | None:
        state = await h.saga.state(message_id)
        if state is None or state.status != "waiting" or state.wait_seq != seq:
            return None
        events = await h.events(message_id)
        return state if any(e.kind == "wait_started" and e.seq == seq for e in events) else None
    return await until(check, timeout, f"saga {message_id} waiting (wait {seq})")


async def signal(h: Harness, message_id: str, name: str = "approval", payload: dict[str, Any] | None = None,
                 saga: SagaLog | None = None, js: Any = None) -> str:
    return await send_signal(saga or h.saga, js or h.js, message_id, name, payload or {}, subject_prefix=SUBJECT_PREFIX)


def waiter_result(events: list[SagaEvent]) -> dict[str, Any]:
    done = [e for e in events if e.kind == "step_completed" and e.actor == "waiter"]
    assert len(done) == 1, kinds(events)
    return done[0].data["enrichment"]["api_data"]["waiter"]


def order(events: list[SagaEvent], *wanted: str) -> list[str]:
    return [e.kind for e in events if e.kind in wanted]


async def test_a_signal_resumes_the_waiting_step_with_its_payload(harness: Harness) -> None:
    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    message = await harness.submit(["waiter", "done"], "wait:approval:120")
    state = await waiting(harness, message.message_id)
    assert state.signal == "approval" and state.step_index == 0 and state.actor == "waiter"
    assert state.deadline is not None and 100 < state.deadline - time.time() <= 121
    assert message.message_id in {s.message_id for s in await harness.saga.running()}

    # A resumption of the waiting step (as recovery would publish it) does not run the handler again.
    await publish(harness.js, message, resume=1)
    await until(lambda: _acked(harness, "waiter"), what="the replay acked")
    assert len(harness.executions("waiter", message.message_id)) == 1
    assert (await harness.saga.state(message.message_id)).status == "waiting"

    assert await signal(harness, message.message_id, payload={"approved": True, "by": "tester"}) == "accepted"
    final = await harness.wait_terminal(message.message_id, timeout=30)

    assert final.status == "completed"
    events = await harness.events(message.message_id)
    assert order(events, "wait_started", "signal_received", "timer_fired", "step_completed") == [
        "wait_started", "signal_received", "step_completed", "step_completed"]
    result = waiter_result(events)
    assert result["kind"] == "signal" and result["payload"] == {"approved": True, "by": "tester"}
    assert result["wait_data"] == {"asked": "toy", "n": 1} and result["signal"] == "approval"
    started = next(e for e in events if e.kind == "wait_started")
    assert started.data["data"] == {"asked": "toy", "n": 1} and started.data["message"]["message_id"] == message.message_id
    assert len(harness.executions("waiter_resume", message.message_id)) == 1
    # After the signal, the timer (still scheduled) fires later and loses: nothing runs twice.
    assert await signal(harness, message.message_id) == "already_decided"


async def test_the_timer_wins_when_no_signal_arrives(harness: Harness) -> None:
    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    message = await harness.submit(["waiter", "done"], "wait:approval:2")
    await waiting(harness, message.message_id)
    started = time.monotonic()

    final = await harness.wait_terminal(message.message_id, timeout=40)

    assert final.status == "completed"
    events = await harness.events(message.message_id)
    assert order(events, "wait_started", "signal_received", "timer_fired", "step_completed") == [
        "wait_started", "timer_fired", "step_completed", "step_completed"]
    fired = next(e for e in events if e.kind == "timer_fired")
    assert fired.data["source"] == "schedule"  # the JetStream schedule, not the sweeper (none runs here)
    result = waiter_result(events)
    assert result["kind"] == "timer" and result["payload"] == {} and result["waited_s"] >= 1.5
    # After the timer: a signal finds the wait decided; another saga's state or an unknown id is not waiting.
    assert await signal(harness, message.message_id) == "already_decided"
    assert await signal(harness, "no-such-saga") == "not_waiting"
    print(f"timer of 2s ended the wait {time.monotonic() - started:.2f}s after it was seen waiting")


async def test_wrong_signals_and_a_second_wait_at_the_same_step(harness: Harness) -> None:
    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    plain = await harness.submit(["done"], "no wait here")
    await harness.wait_terminal(plain.message_id)
    assert await signal(harness, plain.message_id) == "not_waiting"
    with pytest.raises(ValueError):
        await signal(harness, plain.message_id, "Not-A-Name")

    message = await harness.submit(["waiter", "done"], "wait:approval:120 twice")
    await waiting(harness, message.message_id)
    assert await signal(harness, message.message_id, "other_signal") == "not_waiting"
    assert await signal(harness, message.message_id, payload={"round": 1}) == "accepted"
    # The first wake makes the step wait again (wait 2 of the same step), which a second signal ends.
    await waiting(harness, message.message_id, seq=2)
    assert await signal(harness, message.message_id, payload={"round": 2}) == "accepted"
    await harness.wait_terminal(message.message_id)
    events = await harness.events(message.message_id)
    assert order(events, "wait_started", "signal_received", "step_completed") == [
        "wait_started", "signal_received", "wait_started", "signal_received", "step_completed", "step_completed"]
    assert waiter_result(events)["payload"] == {"round": 2}
    assert len(harness.executions("waiter_resume", message.message_id)) == 2


async def test_the_same_signal_sent_twice_at_once_is_accepted_once(harness: Harness) -> None:
    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    other = await nats.connect(harness.server.url)
    try:
        other_js = other.jetstream(timeout=10)
        other_saga = await SagaLog.open(other_js, ttl_s=3600)
        for round_ in range(3):
            message = await harness.submit(["waiter", "done"], f"wait:approval:120 round {round_}")
            await waiting(harness, message.message_id)
            outcomes = await asyncio.gather(
                signal(harness, message.message_id, payload={"from": "first"}),
                signal(harness, message.message_id, payload={"from": "second"}, saga=other_saga, js=other_js))
            assert sorted(outcomes) == ["accepted", "already_decided"]
            await harness.wait_terminal(message.message_id)
            events = await harness.events(message.message_id)
            assert [e.kind for e in events].count("signal_received") == 1
            winner = "first" if outcomes[0] == "accepted" else "second"
            assert waiter_result(events)["payload"] == {"from": winner}
        await until(lambda: _acked(harness, "waiter"), what="every waiter delivery acked")
        for message_id in {mid for (_, mid, _, _) in harness.executions("waiter")}:
            assert len(harness.executions("waiter_resume", message_id)) == 1
    finally:
        await other.close()


async def test_a_wait_survives_kill_9_of_nats_server(harness: Harness) -> None:
    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    timed = await harness.submit(["waiter", "done"], "wait:approval:8")
    signalled = await harness.submit(["waiter", "done"], "wait:approval:600")
    await waiting(harness, timed.message_id)
    await waiting(harness, signalled.message_id)

    harness.server.kill()
    await until(lambda: _async(not harness.nc.is_connected), what="the client saw the server go")
    harness.server.restart()
    await until(lambda: _async(harness.nc.is_connected), what="the client reconnected")
    # The timer had not fired before the crash: it fires from the restarted server's store.
    assert (await harness.saga.state(timed.message_id)).status == "waiting"
    assert not any(e.kind == "timer_fired" for e in await harness.events(timed.message_id))

    assert await until(lambda: signal(harness, signalled.message_id), what="signal after restart") == "accepted"
    for m in (timed, signalled):
        assert (await harness.wait_terminal(m.message_id, timeout=45)).status == "completed"
    timed_events = await harness.events(timed.message_id)
    assert waiter_result(timed_events)["kind"] == "timer"
    assert next(e for e in timed_events if e.kind == "timer_fired").data["source"] == "schedule"  # no sweeper here
    assert waiter_result(await harness.events(signalled.message_id))["kind"] == "signal"


async def test_a_wait_survives_kill_9_of_the_waiting_actor(harness: Harness) -> None:
    await harness.run_actor(Done)
    first = harness.spawn_actor("tests.support.toy_actors:Waiter")
    message = await harness.submit(["waiter", "done"], "wait:approval:600")
    await waiting(harness, message.message_id, timeout=60)
    harness.kill9(first)
    # The signal is taken while no waiter process runs; the new process runs the resume.
    assert await signal(harness, message.message_id, payload={"after": "kill"}) == "accepted"
    harness.spawn_actor("tests.support.toy_actors:Waiter")

    final = await harness.wait_terminal(message.message_id, timeout=60)

    assert final.status == "completed"
    assert waiter_result(await harness.events(message.message_id))["payload"] == {"after": "kill"}
    assert len(harness.executions("waiter", message.message_id)) == 2  # the wait, then the resume
    assert len(harness.executions("waiter_resume", message.message_id)) == 1


async def test_the_sweeper_fires_a_wait_whose_schedule_is_missing(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def lost(*args: Any, **kwargs: Any) -> None:
        return None  # the schedule is never published (as if it were lost)

    monkeypatch.setattr(waits, "schedule_timer", lost)
    h = Harness(tmp_path, wait_grace_s=1.0, sweep_interval_s=0.3)
    await h.start()
    try:
        await h.run_actor(Catcher)  # runs recovery, the sweeper
        await h.run_actor(Waiter)
        await h.run_actor(Done)
        message = await h.submit(["waiter", "done"], "wait:approval:1")
        state = await waiting(h, message.message_id)

        final = await h.wait_terminal(message.message_id, timeout=40)

        assert final.status == "completed"
        events = await h.events(message.message_id)
        fired = [e for e in events if e.kind == "timer_fired"]
        assert len(fired) == 1 and fired[0].data["source"] == "sweeper"
        assert fired[0].ts >= (state.deadline or 0) + 1.0 - 0.05  # not before the grace period
        assert waiter_result(events)["kind"] == "timer"
        # Later sweeps leave the ended wait alone: still one wake and one resume.
        await until(lambda: _acked(h, "waiter"), what="every waiter delivery acked")
        assert len(h.executions("waiter_resume", message.message_id)) == 1
        assert [e.kind for e in await h.events(message.message_id)].count("timer_fired") == 1
    finally:
        await h.close()


async def _decided_but_not_published(h: Harness, monkeypatch: pytest.MonkeyPatch, message_id: str) -> None:
    """Send the signal through a sender that dies between its decision and its publish."""
    real = waits.publish_resume

    async def dies(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the sender died before publishing the resume")

    monkeypatch.setattr(waits, "publish_resume", dies)
    with pytest.raises(ConnectionError):
        await signal(h, message_id, payload={"first": True})
    monkeypatch.setattr(waits, "publish_resume", real)
    assert any(e.kind == "signal_received" for e in await h.events(message_id))
    assert (await h.saga.state(message_id)).status == "waiting"


async def test_a_decision_whose_resume_was_never_published_is_repaired_by_the_sweeper(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, wait_grace_s=1.0, sweep_interval_s=0.3)
    await h.start()
    try:
        for cls in (Catcher, Waiter, Done):
            await h.run_actor(cls)
        message = await h.submit(["waiter", "done"], "wait:approval:600")
        await waiting(h, message.message_id)
        # The wake is recorded and the saga still waits after the grace: the sweeper republishes the resume.
        await _decided_but_not_published(h, monkeypatch, message.message_id)
        assert (await h.wait_terminal(message.message_id, timeout=40)).status == "completed"
        await _resumed_once_with(h, message.message_id, {"first": True})
    finally:
        await h.close()


async def test_a_decision_whose_resume_was_never_published_is_repaired_by_a_resent_signal(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (Waiter, Done):  # no recovery runs here: only the resent signal can repair it
        await harness.run_actor(cls)
    message = await harness.submit(["waiter", "done"], "wait:approval:600")
    await waiting(harness, message.message_id)
    await _decided_but_not_published(harness, monkeypatch, message.message_id)
    assert await signal(harness, message.message_id, payload={"second": True}) == "already_decided"
    assert (await harness.wait_terminal(message.message_id, timeout=40)).status == "completed"
    await _resumed_once_with(harness, message.message_id, {"first": True})  # the decision's payload


async def _resumed_once_with(h: Harness, message_id: str, payload: dict[str, Any]) -> None:
    events = await h.events(message_id)
    assert [e.kind for e in events].count("signal_received") == 1
    assert waiter_result(events)["payload"] == payload
    await until(lambda: _acked(h, "waiter"), what="every waiter delivery acked")
    assert len(h.executions("waiter_resume", message_id)) == 1


async def _acked(h: Harness, actor: str) -> bool:
    info = await h.consumer(actor)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _async(value: Any) -> Any:
    return value


async def test_a_resume_runs_on_the_recorded_message_never_on_the_body_sent(harness: Harness) -> None:
    """The resume subject is open to whoever may signal (a gateway): a forged body with a wait number runs the
    message recorded with the wait, and a message there without a recorded wait never runs at all."""
    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    message = await harness.submit(["waiter", "done"], "wait:approval:120")
    await waiting(harness, message.message_id)
    subject = waits.resume_subject(SUBJECT_PREFIX, "waiter")

    # No wait was decided and none is named: dropped, nothing runs.
    # The forgery sends the saga elsewhere after the wait (to an actor nobody runs here).
    forged = message.model_copy(update={"route": message.route.model_copy(update={"steps": ["waiter", "elsewhere"]})})
    await harness.js.publish(subject, forged.to_bytes(), headers={waits.WAKE_HEADER: "0"})
    await harness.js.publish(subject, forged.to_bytes(), headers={waits.WAKE_HEADER: "7"})
    await until(lambda: _acked(harness, "waiter"), what="the forged resumes acked")
    assert harness.executions("waiter_resume", message.message_id) == []

    # A real decision, then the forged body sent as its resume: the recorded message is what runs.
    assert await signal(harness, message.message_id, payload={"approved": True}) == "accepted"
    await harness.js.publish(subject, forged.to_bytes(), headers={waits.WAKE_HEADER: "1"})
    final = await harness.wait_terminal(message.message_id, timeout=30)
    assert final.status == "completed"  # through "done", as recorded: the forged route was never taken
    assert [e.actor for e in await harness.events(message.message_id) if e.kind == "step_completed"] == [
        "waiter", "done"]
    assert len(harness.executions("waiter_resume", message.message_id)) == 1


async def test_a_signal_sent_before_the_wait_is_kept_for_it(harness: Harness) -> None:
    """A signal that comes while the saga is still on its way to the wait (`buffer=True`) is kept and ends the
    wait as soon as it starts; without `buffer` it is refused; a second one is not kept twice."""
    message = await harness.submit(["waiter", "done"], "wait:approval:120")  # no waiter runs yet
    await until(lambda: harness.saga.state(message.message_id), what="the saga started")
    assert await signal(harness, message.message_id, payload={"early": True}) == "not_waiting"
    assert await send_signal(harness.saga, harness.js, message.message_id, "approval", {"early": True},
                             subject_prefix=SUBJECT_PREFIX, buffer=True) == "accepted"
    assert await send_signal(harness.saga, harness.js, message.message_id, "approval", {"early": False},
                             subject_prefix=SUBJECT_PREFIX, buffer=True) == "already_decided"

    await harness.run_actor(Waiter)
    await harness.run_actor(Done)
    final = await harness.wait_terminal(message.message_id, timeout=30)
    assert final.status == "completed"
    events = await harness.events(message.message_id)
    assert order(events, "signal_buffered", "wait_started", "signal_received", "step_completed") == [
        "signal_buffered", "wait_started", "signal_received", "step_completed", "step_completed"]
    result = waiter_result(events)
    assert result["kind"] == "signal" and result["payload"] == {"early": True}
    assert len(harness.executions("waiter_resume", message.message_id)) == 1
