"""Crashes: actor processes killed with SIGKILL mid-step or right after recording their result, and the
nats-server itself killed -9 and restarted on its store while messages are in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from saga.log import TERMINAL, SagaState

from tests.support.harness import Harness, in_trace, kinds
from tests.support.toy_actors import Catcher, Count, Done, Undo, Upper

pytestmark = pytest.mark.asyncio


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


async def test_actor_killed_mid_step_is_redelivered_to_a_new_process(harness: Harness) -> None:
    await harness.run_actor(Done)
    first = harness.spawn_actor("tests.support.toy_actors:Slow")
    message = await harness.submit(["slow", "done"], "sleep:4")
    # Wait until the slow step is really running in the first process, then kill it.
    await wait_for(lambda: len(harness.executions("slow", message.message_id)) == 1)
    harness.kill9(first)
    killed_at = time.monotonic()
    harness.spawn_actor("tests.support.toy_actors:Slow")

    state = await harness.wait_terminal(message.message_id, timeout=30)

    assert state.status == "completed"
    slow_runs = harness.executions("slow", message.message_id)
    assert 1 <= len(slow_runs) <= 2 and slow_runs[-1][3] == 2  # the second run is delivery attempt 2
    assert len(harness.executions("done", message.message_id)) == 1
    events = await harness.events(message.message_id)
    redelivered = [e for e in events if e.kind == "redelivered"]
    assert redelivered and redelivered[0].actor == "slow" and redelivered[0].data["source"] == "jetstream"
    assert [k for k in kinds(events) if k[0] == "step_completed"] == [
        ("step_completed", "slow", 0), ("step_completed", "done", 1)]
    print(f"kill to completion: {time.monotonic() - killed_at:.2f}s (ack_wait {harness.settings.ack_wait_s}s)")


async def test_killed_after_recording_completion_reuses_the_recorded_enrichment(harness: Harness) -> None:
    await harness.run_actor(Done)
    crashing = harness.spawn_actor("tests.support.toy_actors:Upper", env={"SUPPORTMESH_CRASH_POINT": "upper:after_step_completed"})
    message = await harness.submit(["upper", "done"], "remember me")
    await wait_for(lambda: crashing.poll() is not None)  # died right after step_completed, before publish/ack
    assert crashing.returncode == 137
    harness.spawn_actor("tests.support.toy_actors:Upper")

    state = await harness.wait_terminal(message.message_id, timeout=30)

    assert state.status == "completed"
    # The handler ran once, in the process that died; the redelivery reused the recorded enrichment.
    assert len(harness.executions("upper", message.message_id)) == 1
    assert len(harness.executions("done", message.message_id)) == 1
    # The customer's saga already finished from the first process's publish; JetStream still redelivers
    # the un-acked step after ack_wait, and the new process answers it from the record.
    deadline = time.monotonic() + 15
    events = await harness.events(message.message_id)
    while not any(e.kind == "redelivered" for e in events) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        events = await harness.events(message.message_id)
    assert any(e.kind == "redelivered" and e.actor == "upper" for e in events)
    for _ in range(50):  # the redelivery is acked: nothing is left pending for `upper`
        if (await harness.consumer("upper")).num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert (await harness.consumer("upper")).num_ack_pending == 0
    assert len(harness.executions("upper", message.message_id)) == 1
    assert len(harness.executions("done", message.message_id)) == 1
    done = [e for e in events if e.kind == "step_completed" and e.actor == "done"][0]
    assert done.data["enrichment"]["api_data"]["upper"] == "REMEMBER ME"


async def test_nats_server_killed_and_restarted_loses_nothing(harness: Harness) -> None:
    # `done` starts only after the restart, so every saga is in flight when nats-server dies: some mid-route in
    # `upper` and `count`, others with their last hop stored in JetStream and no one consuming it yet.
    for cls in (Upper, Count):
        await harness.run_actor(cls)
    messages = [await harness.submit(["upper", "count", "done"], f"before the crash {i}") for i in range(30)]
    await wait_for(lambda: len(harness.executions("count")) > 0)
    states = [await harness.saga.state(m.message_id) for m in messages]
    ended = [s.message_id for s in states if s is not None and s.status in TERMINAL]
    assert not ended, f"sagas that ended before nats-server was killed: {ended}"
    harness.server.kill()
    await wait_for(lambda: not harness.nc.is_connected)
    harness.server.restart()
    await harness.run_actor(Done)

    for m in messages:
        state = await harness.wait_terminal(m.message_id, timeout=45)
        assert state.status == "completed"
    for actor in ("upper", "count", "done"):
        assert {mid for (_, mid, _, _) in harness.executions(actor)} == {m.message_id for m in messages}
    # Every saga finished with exactly one completion per step, however often steps were retried.
    for m in messages:
        events = await harness.events(m.message_id)
        assert [e.actor for e in events if e.kind == "step_completed"] == ["upper", "count", "done"], kinds(events)
        assert [e.kind for e in events].count("saga_completed") == 1, kinds(events)


async def keep_restarting_until_terminal(harness: Harness, spec: str, env: dict[str, str], message_id: str,
                                         timeout: float = 40.0) -> int:
    """Play the supervisor: restart the actor process each time it dies, until the saga leaves `running`.
    Returns how often it died."""
    proc = harness.spawn_actor(spec, env=env)
    deadline = time.monotonic() + timeout
    deaths = 0
    while time.monotonic() < deadline:
        state = await harness.saga.state(message_id)
        if state and state.status != "running":
            break
        if proc.poll() is not None:
            deaths += 1
            proc = harness.spawn_actor(spec, env=env)
        await asyncio.sleep(0.1)
    return deaths


async def test_message_whose_process_always_dies_becomes_a_dead_letter(harness: Harness) -> None:
    await harness.run_actor(Done)
    await harness.run_actor(Catcher)  # the error handler: also consumes dead-letter advisories
    crash_env = {"SUPPORTMESH_CRASH_POINT": "upper:before_handler:always"}
    with in_trace() as trace_id:
        message = await harness.submit(["upper", "done"], "this kills upper every time")

    deaths = await keep_restarting_until_terminal(harness, "tests.support.toy_actors:Upper", crash_env, message.message_id)

    state = await harness.wait_terminal(message.message_id, timeout=5)
    assert state.status == "escalated"
    max_deliver = harness.settings.max_attempts + 1
    assert deaths == max_deliver  # every delivery killed its process, and not one more was made
    events = await harness.events(message.message_id)
    dead = [e for e in events if e.kind == "dead_lettered"]
    assert len(dead) == 1 and dead[0].actor == "upper" and dead[0].data["deliveries"] == max_deliver
    caught = [e for e in events if e.kind == "step_completed" and e.actor == "catcher"]
    assert caught and caught[0].data["enrichment"]["api_data"]["catcher"] == "dead_letter"
    assert caught[0].trace_id == trace_id  # the dead letter's detour stays in the customer message's trace
    assert harness.executions("done", message.message_id) == []
    # The dead message is gone from the work queue: nothing left to deliver to `upper`.
    info = await harness.consumer("upper")
    assert info.num_pending == 0


async def test_error_handler_whose_process_always_dies_fails_the_saga_and_answers(tmp_path, redis_url) -> None:
    """The dead letter is the error handler's own step: rather than loop, the saga is failed, and the customer
    still gets an answer, through the response aggregator (so it is in the history)."""
    harness = await Harness(tmp_path, redis_url=redis_url).start()
    try:
        await _error_handler_always_dies(harness)
    finally:
        await harness.close()


async def _error_handler_always_dies(harness: Harness) -> None:
    await harness.run_actor(Catcher)  # consumes the dead-letter advisories (the route's handler is `upper`)
    await harness.run_aggregator()
    subject, replies = await harness.reply_inbox()
    crash_env = {"SUPPORTMESH_CRASH_POINT": "upper:before_handler:always"}
    message = await harness.submit(["upper", "done"], "this kills upper every time", error_handler="upper",
                                   reply_subject=subject)

    deaths = await keep_restarting_until_terminal(harness, "tests.support.toy_actors:Upper", crash_env, message.message_id)

    state = await harness.wait_terminal(message.message_id, timeout=15)
    assert state.status == "failed"
    assert deaths == harness.settings.max_attempts + 1
    events = await harness.events(message.message_id)
    assert [e.kind for e in events if e.kind in ("dead_lettered", "saga_failed", "saga_completed")] == [
        "dead_lettered", "saga_failed", "saga_completed"]
    result = await harness.results.get(message.message_id)
    assert result is not None and result.status == "escalated"
    assert harness.history_rows(message.message_id) == [("customer", "this kills upper every time"),
                                                        ("agent", result.response)]
    await wait_for(lambda: len(replies) >= 1)
    assert [r.message_id for r in replies] == [message.message_id]
    assert harness.executions("done", message.message_id) == []


async def test_lost_publish_after_the_record_is_redone_from_the_record(harness: Harness) -> None:
    """`step_completed` is recorded, but the next hop is never published (the process died between the two, or
    the publish failed), and the step is not acked: the redelivery publishes the next hop from the record,
    without calling the handler again, and the next step runs exactly once."""
    from prometheus_client import REGISTRY

    from actors.domain import Message
    from actors.runtime import ActorRuntime

    class PublishLostOnce(ActorRuntime):
        """Loses the first publish of a next hop, once the step's result is safely recorded."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lost: list[str] = []
            forward = self.core.forward

            async def lose_once(message: Message) -> None:
                if not self.lost:
                    self.lost.append(message.message_id)
                    while await self.saga.get_event(message.message_id, 0, "step_completed") is None:
                        await asyncio.sleep(0.02)  # the record and the publish run concurrently
                    raise ConnectionError("connection lost before the publish")
                await forward(message)

            self.core.forward = lose_once  # type: ignore[method-assign]

    def memoized() -> float:
        return REGISTRY.get_sample_value("supportmesh_actor_messages_total",
                                         {"actor": "upper", "outcome": "memoized"}) or 0.0

    runtime = PublishLostOnce(Upper(), harness.settings)
    await runtime.start()
    harness.runtimes.append(runtime)
    await harness.run_actor(Done)
    before = memoized()
    message = await harness.submit(["upper", "done"], "remember me")

    state = await harness.wait_terminal(message.message_id, timeout=30)

    assert state.status == "completed" and runtime.lost == [message.message_id]
    assert [a for (_, _, _, a) in harness.executions("upper", message.message_id)] == [1]  # the handler ran once
    assert len(harness.executions("done", message.message_id)) == 1  # the next step ran exactly once
    assert memoized() - before == 1  # the redelivery was answered from the record
    events = await harness.events(message.message_id)
    assert [(e.actor, e.attempt) for e in events if e.kind == "step_completed"] == [("upper", 1), ("done", 1)]
    assert [(e.actor, e.attempt, e.data["source"]) for e in events if e.kind == "redelivered"] == [
        ("upper", 2, "jetstream")]
    assert not [e for e in events if e.actor == "done" and e.kind == "redelivered"]  # done: one delivery
    done = next(e for e in events if e.kind == "step_completed" and e.actor == "done")
    assert done.data["enrichment"]["api_data"]["upper"] == "REMEMBER ME"  # the recorded enrichment, forwarded


async def test_side_effect_happens_once_when_its_process_dies_before_recording(harness: Harness, tmp_path) -> None:
    """The execution step performs a refund, then its process dies before `step_completed` is recorded; the
    redelivery runs the handler again, and the idempotency key keeps the refund to one."""
    import httpx

    from actors.domain import ActionPlan, new_message
    from tests.support.harness import start_mocks
    from saga.transport import start_saga

    mocks, url = start_mocks(tmp_path)
    harness.procs.append(mocks)
    env = {"SUPPORTMESH_ORDERS_API_URL": url, "SUPPORTMESH_CUSTOMERS_API_URL": url,
           "SUPPORTMESH_TRACKING_API_URL": url}
    first = harness.spawn_actor("execution_coordinator",
                                env={**env, "SUPPORTMESH_CRASH_POINT": "execution_coordinator:after_handler"})
    await harness.run_actor(Done)
    message = new_message(session_id="s1", customer_email="user@example.com", customer_message="refund please",
                          steps=["execution_coordinator", "done"], customer_verified=True)
    plan = ActionPlan(action="refund", order_id="44444", amount=5.0, approved=True, reason="refund_request")
    message = message.enriched({"action_plan": plan})
    await start_saga(harness.js, harness.saga, message)
    await wait_for(lambda: first.poll() is not None, timeout=30)  # died after the refund, before recording it
    assert first.returncode == 137
    harness.spawn_actor("execution_coordinator", env=env)

    state = await harness.wait_terminal(message.message_id, timeout=30)

    assert state.status == "completed"
    actions = httpx.get(f"{url}/orders/44444/actions", timeout=5).json()["actions"]
    assert len(actions) == 1 and actions[0]["idempotency_key"] == f"{message.message_id}:refund:44444"
    events = await harness.events(message.message_id)
    assert [(e.attempt, e.data["source"]) for e in events
            if e.kind == "redelivered" and e.actor == "execution_coordinator"] == [(2, "jetstream")]
    executed = [e for e in events if e.kind == "action_executed"]
    assert len(executed) == 1 and executed[0].data["action_id"] == actions[0]["action_id"]


@pytest.mark.integration  # starts its own nats-server
async def test_sweeper_resumes_a_saga_whose_message_was_lost_then_gives_up(tmp_path) -> None:
    """A saga whose next message never reached the stream (lost between two hops) is resumed from the saga
    log by the sweeper; one that cannot move at all goes to the error handler after the cap."""
    from actors.domain import new_message
    from saga.log import SagaEvent

    h = Harness(tmp_path, stall_after_s=1.0, sweep_interval_s=0.3, max_sweeps=2)
    await h.start()
    try:
        for cls in (Upper, Done, Catcher):  # Catcher sweeps: it is the error handler here
            await h.run_actor(cls)
        lost = new_message(session_id="s1", customer_email="user@example.com", customer_message="lost",
                           steps=["upper", "done"])
        lost = lost.model_copy(update={"route": lost.route.model_copy(update={"error_handler": "catcher"})})
        # Record the start and the state as the gateway does, but "lose" the publish.
        started = (await h.submit(["upper", "done"], "normal"))
        await h.saga.record(SagaEvent(message_id=lost.message_id, kind="saga_started", actor="gateway", step_index=0,
                                      data={"route": lost.route.steps, "message": lost.model_dump(mode="json")}))
        await h.saga.set_state(lost.message_id, status="running", step_index=0, actor="upper")
        stuck = await h.submit(["upper", "ghost", "done"], "nobody serves ghost")

        assert (await h.wait_terminal(started.message_id)).status == "completed"
        assert (await h.wait_terminal(lost.message_id, timeout=20)).status == "completed"
        events = await h.events(lost.message_id)
        assert any(e.kind == "redelivered" and e.data["source"] == "sweeper" for e in events)
        assert len(h.executions("upper", lost.message_id)) == 1

        state = await h.wait_terminal(stuck.message_id, timeout=30)
        assert state.status == "escalated"
        events = await h.events(stuck.message_id)
        sweeps = [e for e in events if e.kind == "redelivered" and e.data["source"] == "sweeper"]
        assert len(sweeps) == 2
        caught = [e for e in events if e.kind == "step_completed" and e.actor == "catcher"]
        assert caught[0].data["enrichment"]["api_data"]["catcher"] == "stalled"
    finally:
        await h.close()


@pytest.fixture
async def sweeping(tmp_path, redis_url):
    """A harness whose sweeper (in the error handler, `catcher`) acts after one second of silence (with Redis,
    for the response aggregator)."""
    h = Harness(tmp_path, stall_after_s=1.0, sweep_interval_s=0.3, max_sweeps=2, redis_url=redis_url)
    await h.start()
    try:
        yield h
    finally:
        await h.close()


async def test_sweeper_resumes_a_hop_lost_inside_the_duplicate_window(sweeping: Harness) -> None:
    """The first hop reached the stream and was lost there: its `Nats-Msg-Id` is still inside the duplicate
    window (2 minutes), so a resumption under the same id would be dropped by nats-server."""
    from actors.domain import subject_for

    h = sweeping
    for cls in (Done, Catcher):
        await h.run_actor(cls)
    message = await h.submit(["upper", "done"], "lost in the stream")
    lost = await h.js.get_last_msg(h.settings.stream_name, subject_for("upper"))
    await h.js.delete_msg(h.settings.stream_name, lost.seq)
    await h.run_actor(Upper)

    state = await h.wait_terminal(message.message_id, timeout=30)

    assert state.status == "completed"
    events = await h.events(message.message_id)
    sweeps = [e for e in events if e.kind == "redelivered" and e.data["source"] == "sweeper"]
    assert len(sweeps) == 1 and sweeps[0].actor == "upper"
    assert len(h.executions("upper", message.message_id)) == 1


async def test_saga_stuck_at_its_error_handler_is_failed_and_answered_after_the_cap(sweeping: Harness) -> None:
    h = sweeping
    await h.run_actor(Catcher)  # sweeps; the stuck saga's error handler is `ghost`, which nobody serves
    await h.run_aggregator()
    subject, replies = await h.reply_inbox()
    message = await h.submit(["ghost"], "nobody serves my handler", error_handler="ghost", reply_subject=subject)

    state = await h.wait_terminal(message.message_id, timeout=30)

    assert state.status == "failed"
    events = await h.events(message.message_id)
    sweeps = [e for e in events if e.kind == "redelivered" and e.data["source"] == "sweeper"]
    assert len(sweeps) == h.settings.max_sweeps
    assert [(e.actor, e.step_index) for e in events if e.kind == "saga_failed"] == [("ghost", 0)]
    assert events[-1].kind == "saga_completed" and events[-1].data["status"] == "failed"
    result = await h.results.get(message.message_id)
    assert result is not None and result.status == "escalated"
    assert h.history_rows(message.message_id) == [("customer", "nobody serves my handler"), ("agent", result.response)]
    await wait_for(lambda: len(replies) >= 1)
    await asyncio.sleep(1.5)  # more sweep rounds than the stall time: it is not swept again
    events = await h.events(message.message_id)
    assert len([e for e in events if e.kind == "redelivered"]) == h.settings.max_sweeps
    assert len(replies) == 1


async def test_sweeper_resumption_continues_the_trace_of_the_customer_message(sweeping: Harness) -> None:
    """Actors in their own processes (with tracing on): the step the sweeper resumes is in the trace the
    customer message started, not in a new one."""
    h = sweeping
    env = {"SUPPORTMESH_STALL_AFTER_S": "1", "SUPPORTMESH_SWEEP_INTERVAL_S": "0.3"}
    for spec in ("tests.support.toy_actors:Upper", "tests.support.toy_actors:Done", "tests.support.toy_actors:Catcher"):
        h.spawn_actor(spec, env={**env, "SUPPORTMESH_RECOVERY": "1" if spec.endswith("Catcher") else "0"})
    # The gateway records the saga's start inside the request's trace; here the first hop is lost.
    with in_trace() as trace_id:
        message = await h.submit(["upper", "done"], "resume me in my trace", publish=False)

    state = await h.wait_terminal(message.message_id, timeout=40)

    assert state.status == "completed"
    events = await h.events(message.message_id)
    assert any(e.kind == "redelivered" and e.data["source"] == "sweeper" for e in events)
    traced = [(e.kind, e.actor, e.trace_id) for e in events if e.actor in ("upper", "done")]
    assert traced and all(t == trace_id for (_, _, t) in traced), traced


async def wait_status(h: Harness, message_id: str, timeout: float = 30.0) -> tuple[set[str], SagaState]:
    """Follow the saga's state until it ends; returns every status seen on the way and the final state."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await h.saga.state(message_id)
        if state is not None:
            seen.add(state.status)
            if state.status in TERMINAL:
                return seen, state
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga {message_id} not terminal after {timeout}s (seen {seen})")


async def test_a_long_compensation_is_compensating_and_not_taken_for_a_stalled_saga(sweeping: Harness) -> None:
    """Recording `compensation_started` marks the saga `compensating` (the runtime's transition, whatever actor
    undoes), and while the undo takes longer than the stall time the sweeper leaves it alone."""
    h = sweeping
    for cls in (Undo, Done, Catcher):
        await h.run_actor(cls)
    message = await h.submit(["undo", "done"], "sleep:3")  # three times the stall time

    seen, state = await wait_status(h, message.message_id)

    assert "compensating" in seen and state.status == "completed"
    events = await h.events(message.message_id)
    assert [e for e in events if e.kind == "redelivered"] == []
    assert len(h.executions("undo", message.message_id)) == 1


async def test_sweeper_resumes_a_compensating_saga_whose_next_hop_was_lost(sweeping: Harness) -> None:
    from actors.domain import subject_for

    h = sweeping
    for cls in (Undo, Catcher):
        await h.run_actor(cls)
    message = await h.submit(["undo", "done"], "undo, then lose the hop")
    lost = None
    deadline = time.monotonic() + 15
    while lost is None:
        assert time.monotonic() < deadline, "the hop to `done` was never published"
        try:
            lost = await h.js.get_last_msg(h.settings.stream_name, subject_for("done"))
        except Exception:
            await asyncio.sleep(0.05)
    await h.js.delete_msg(h.settings.stream_name, lost.seq)
    state = await h.saga.state(message.message_id)
    assert state is not None and state.status == "compensating"
    await h.run_actor(Done)

    state = await h.wait_terminal(message.message_id, timeout=30)

    assert state.status == "completed"
    events = await h.events(message.message_id)
    sweeps = [e for e in events if e.kind == "redelivered" and e.data["source"] == "sweeper"]
    assert [(e.actor, e.step_index) for e in sweeps] == [("done", 1)]
    assert len(h.executions("done", message.message_id)) == 1


async def test_saga_state_without_a_recorded_start_is_failed_after_the_stall_time(sweeping: Harness, caplog) -> None:
    """The gateway wrote `saga_state` but not `saga_started` (and refused the message with a 503): the saga can
    never run, so the sweeper marks it failed, says so in its log, and answers no one."""
    from saga.protocol import new_message_id

    h = sweeping
    await h.run_actor(Catcher)
    message_id = new_message_id()
    written = time.time()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"  # the gateway's request span (the state records it)
    await h.saga.set_state(message_id, status="running", step_index=0, actor="upper", session_id="s1",
                           trace_id=trace_id)

    with caplog.at_level(logging.WARNING, logger="saga.recovery"):
        state = await h.wait_terminal(message_id, timeout=30)

    assert state.status == "failed"
    [failed] = await h.events(message_id)
    assert failed.kind == "saga_failed" and failed.data["reason"] == "not_started" and failed.trace_id == trace_id
    assert failed.ts - written >= h.settings.stall_after_s  # not before the stall time
    assert await h.results.get(message_id) is None
    # Logged outside any span, the line still carries the message's trace id.
    lines = [r for r in caplog.records if getattr(r, "message_id", None) == message_id]
    assert any("never started" in r.getMessage() and r.trace_id == trace_id for r in lines)  # type: ignore[attr-defined]


async def test_sweepers_log_lines_about_a_message_carry_its_trace_id(sweeping: Harness, caplog) -> None:
    """A saga whose start recorded no W3C context (only the trace id, in its metadata): the resumption's span
    starts a new trace, but the sweeper's line about the message names the message's own trace."""
    from actors.domain import new_message
    from saga.transport import record_start

    h = sweeping
    for cls in (Done, Catcher):
        await h.run_actor(cls)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    message = new_message(session_id="s1", customer_email="user@example.com", customer_message="lost hop",
                          steps=["upper", "done"])
    message = message.model_copy(update={
        "metadata": message.metadata.model_copy(update={"trace_id": trace_id}),
        "route": message.route.model_copy(update={"error_handler": "catcher"})})
    await record_start(h.saga, message)  # recorded, never published: the sweeper must resume it
    await h.run_actor(Upper)

    with caplog.at_level(logging.WARNING, logger="saga.recovery"):
        assert (await h.wait_terminal(message.message_id, timeout=30)).status == "completed"

    resumed = [r for r in caplog.records if getattr(r, "message_id", None) == message.message_id
               and "resumed stalled saga" in r.getMessage()]
    assert resumed and all(r.trace_id == trace_id for r in resumed)  # type: ignore[attr-defined]
