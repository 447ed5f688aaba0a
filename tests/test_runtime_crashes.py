"""Crashes: actor processes killed with SIGKILL mid-step or right after recording their result, and the
nats-server itself killed -9 and restarted on its store while messages are in flight."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime_harness import Harness, kinds
from toy_actors import Catcher, Count, Done, Upper

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
    first = harness.spawn_actor("toy_actors:Slow")
    message = await harness.submit(["slow", "done"], "sleep:4")
    # Wait until the slow step is really running in the first process, then kill it.
    await wait_for(lambda: len(harness.executions("slow", message.message_id)) == 1)
    harness.kill9(first)
    killed_at = time.monotonic()
    harness.spawn_actor("toy_actors:Slow")

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
    crashing = harness.spawn_actor("toy_actors:Upper", env={"SUPPORTMESH_CRASH_POINT": "upper:after_step_completed"})
    message = await harness.submit(["upper", "done"], "remember me")
    await wait_for(lambda: crashing.poll() is not None)  # died right after step_completed, before publish/ack
    assert crashing.returncode == 137
    harness.spawn_actor("toy_actors:Upper")

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
    for cls in (Upper, Count, Done):
        await harness.run_actor(cls)
    messages = [await harness.submit(["upper", "count", "done"], f"before the crash {i}") for i in range(30)]
    harness.server.kill()
    await asyncio.sleep(0.5)
    harness.server.restart()

    for m in messages:
        state = await harness.wait_terminal(m.message_id, timeout=45)
        assert state.status == "completed"
    for actor in ("upper", "count", "done"):
        per_message = {}
        for (_, mid, _, _) in harness.executions(actor):
            per_message[mid] = per_message.get(mid, 0) + 1
        assert set(per_message) == {m.message_id for m in messages}
    # Every saga finished with exactly one completion per step, however often steps were retried.
    for m in messages[:5]:
        events = await harness.events(m.message_id)
        assert [e.actor for e in events if e.kind == "step_completed"] == ["upper", "count", "done"]


async def test_message_whose_process_always_dies_becomes_a_dead_letter(harness: Harness) -> None:
    await harness.run_actor(Done)
    await harness.run_actor(Catcher)  # the error handler: also consumes dead-letter advisories
    crash_env = {"SUPPORTMESH_CRASH_POINT": "upper:before_handler:always"}
    proc = harness.spawn_actor("toy_actors:Upper", env=crash_env)
    message = await harness.submit(["upper", "done"], "this kills upper every time")

    # Play the supervisor: restart the process each time it dies, until JetStream gives up.
    deadline = time.monotonic() + 40
    deaths = 0
    while time.monotonic() < deadline:
        state = await harness.saga.state(message.message_id)
        if state and state.status != "running":
            break
        if proc.poll() is not None:
            deaths += 1
            proc = harness.spawn_actor("toy_actors:Upper", env=crash_env)
        await asyncio.sleep(0.1)

    state = await harness.wait_terminal(message.message_id, timeout=5)
    assert state.status == "escalated"
    max_deliver = harness.settings.max_attempts + 1
    assert deaths == max_deliver  # every delivery killed its process, and not one more was made
    events = await harness.events(message.message_id)
    dead = [e for e in events if e.kind == "dead_lettered"]
    assert len(dead) == 1 and dead[0].actor == "upper" and dead[0].data["deliveries"] == max_deliver
    caught = [e for e in events if e.kind == "step_completed" and e.actor == "catcher"]
    assert caught and caught[0].data["enrichment"]["api_data"]["catcher"] == "dead_letter"
    assert harness.executions("done", message.message_id) == []
    # The dead message is gone from the work queue: nothing left to deliver to `upper`.
    info = await harness.consumer("upper")
    assert info.num_pending == 0
