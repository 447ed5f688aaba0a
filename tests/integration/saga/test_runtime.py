"""The durable actor runtime against a real nats-server: delivery, saga log, retries, errors, poison
messages, crashes of actors and of the server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from nats.js.errors import KeyNotFoundError

from actors.base import FailureContext
from actors.domain import Message, subject_for
from actors.drain import step_drain_s
from actors.results import ChatResult
from saga.direct import live_entries
from saga.log import LOG_BUCKET, RUNNING_BUCKET, SagaEvent

from tests.support.harness import Harness, kinds
from tests.support.toy_actors import BrokenAggregator, Catcher, Count, Done, Flaky, Slow, Upper

pytestmark = pytest.mark.asyncio


async def test_route_of_three_actors_completes_with_ordered_saga_log(harness: Harness) -> None:
    for cls in (Upper, Count, Done):
        await harness.run_actor(cls)
    message = await harness.submit(["upper", "count", "done"], "my order is late")

    state = await harness.wait_terminal(message.message_id)

    assert state.status == "completed"
    events = await harness.events(message.message_id)
    assert kinds(events) == [
        ("saga_started", "gateway", 0),
        ("step_completed", "upper", 0),
        ("step_completed", "count", 1),
        ("step_completed", "done", 2),
        ("saga_completed", "done", 2),
    ]
    # Each completion records the enrichment it added, so a redelivery can reuse it.
    completed = [e for e in events if e.kind == "step_completed"]
    assert completed[0].data["enrichment"]["api_data"] == {"upper": "MY ORDER IS LATE"}
    assert completed[2].data["enrichment"]["api_data"] == {"upper": "MY ORDER IS LATE", "count": 4, "done": True}
    assert all(e.duration_ms is not None and e.duration_ms >= 0 for e in completed)


async def test_recording_the_same_fact_twice_is_a_noop(harness: Harness) -> None:
    from saga.log import SagaEvent

    event = SagaEvent(message_id="m1", kind="step_completed", actor="a", step_index=0, data={"x": 1})
    assert await harness.saga.record(event) is True
    assert await harness.saga.record(event.model_copy(update={"data": {"x": 2}})) is False
    history = await harness.events("m1")
    assert len(history) == 1 and history[0].data == {"x": 1}


async def test_state_never_moves_back_from_a_terminal_status(harness: Harness) -> None:
    saga = harness.saga
    rev = await saga.set_state("m2", status="running", step_index=0, actor="a")
    assert rev
    assert await saga.set_state("m2", status="running", step_index=3, actor="c", expected_revision=rev)
    # A stale revision hint is corrected by a re-read, not a lost update.
    assert await saga.set_state("m2", status="completed", step_index=3, actor="c", expected_revision=rev)
    assert await saga.set_state("m2", status="running", step_index=1, actor="b") is None
    state = await saga.state("m2")
    assert state is not None and state.status == "completed" and state.step_index == 3


async def test_a_repeated_start_of_a_finished_saga_changes_nothing(harness: Harness) -> None:
    """The gateway creates a new saga's state without reading it first (`expected_revision=0`); a repeated
    start of the same message (an Idempotency-Key retry) finds the saga finished and leaves it so, and takes
    back the running-index entry it wrote alongside its create (the index is what the sweeper reads)."""
    saga = harness.saga
    assert await saga.set_state("m3", status="running", step_index=0, actor="a", expected_revision=0)
    assert await saga.set_state("m3", status="completed", step_index=2, actor="c")

    assert await saga.set_state("m3", status="running", step_index=0, actor="a", expected_revision=0) is None

    state = await saga.state("m3")
    assert state is not None and state.status == "completed"
    running = await harness.js.key_value(RUNNING_BUCKET)
    with pytest.raises(KeyNotFoundError):
        await running.get("m3")


async def test_retryable_failure_retries_with_backoff_then_completes(harness: Harness) -> None:
    for cls in (Flaky, Done, Catcher):
        await harness.run_actor(cls)
    message = await harness.submit(["flaky", "done"], "fail-retry:2")

    state = await harness.wait_terminal(message.message_id)

    assert state.status == "completed"
    events = await harness.events(message.message_id)
    retries = [e for e in events if e.kind == "retry_scheduled"]
    assert [e.attempt for e in retries] == [1, 2], kinds(events)
    # Every attempt after the first starts by recording its redelivery.
    starts = {e.attempt: e.ts for e in events if e.kind == "redelivered" and e.actor == "flaky"}
    assert sorted(starts) == [2, 3]
    for retry in retries:
        # The next attempt starts no earlier than the backoff delay the runtime scheduled.
        waited = starts[retry.attempt + 1] - retry.ts
        assert waited >= retry.data["delay_s"] * 0.9, (retry.attempt, waited, retry.data)
    assert [a for (_, _, _, a) in harness.executions("flaky", message.message_id)] == [1, 2, 3]
    assert len(harness.executions("done", message.message_id)) == 1


@pytest.mark.parametrize("text,kind,expected_deliveries", [("fail-permanent", "permanent", 1),
                                                            ("fail-always", "retryable_exhausted", 3)])
async def test_failures_reach_the_error_handler_and_are_not_delivered_again(
    harness: Harness, text: str, kind: str, expected_deliveries: int
) -> None:
    for cls in (Flaky, Done, Catcher):
        await harness.run_actor(cls)
    # A terminated message is a dead letter: the error handler would get the failure a second time, as poison.
    terminated: list[bytes] = []
    advisories = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{harness.settings.stream_name}.flaky"

    async def on_terminated(msg: Any) -> None:
        terminated.append(msg.data)

    await harness.nc.subscribe(advisories, cb=on_terminated)
    message = await harness.submit(["flaky", "done"], text)

    state = await harness.wait_terminal(message.message_id)

    assert state.status == "escalated"
    events = await harness.events(message.message_id)
    failed = [e for e in events if e.kind == "step_failed"]
    assert len(failed) == 1 and failed[0].data["kind"] == kind
    caught = [e for e in events if e.kind == "step_completed" and e.actor == "catcher"]
    assert caught and caught[0].data["enrichment"]["api_data"]["catcher"] == kind
    # The error handler saw payload.error (the toy catcher copies its kind), and `done` never ran.
    assert harness.executions("done", message.message_id) == []
    # Acked, not terminated and not left to time out: watch past ack_wait for a redelivery or an advisory.
    quiet_until = time.monotonic() + harness.settings.ack_wait_s + 1
    while time.monotonic() < quiet_until and not terminated \
            and len(harness.executions("flaky", message.message_id)) <= expected_deliveries:
        await asyncio.sleep(0.1)
    assert len(harness.executions("flaky", message.message_id)) == expected_deliveries
    assert terminated == []
    info = await harness.consumer("flaky")
    assert info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.parametrize("body,headers", [
    (b"not json at all", None), (orjson.dumps({"message_id": "abc", "route": "nope"}), None),
    (orjson.dumps([1, 2, 3]), None),
    # Empty, with the header the server's pull statuses carry: still a delivery, not a status to ignore.
    (b"", {"Status": "408"}),
])
async def test_malformed_message_is_terminated_recorded_and_not_redelivered(harness: Harness, body: bytes,
                                                                           headers: dict[str, str] | None) -> None:
    rt = await harness.run_actor(Upper)
    ack = await harness.js.publish(subject_for("upper"), body, headers=headers)

    deadline = time.monotonic() + 10
    poison = []
    while time.monotonic() < deadline and not poison:
        keys = await live_entries(harness.nc, LOG_BUCKET)
        poison = [k for k in keys if k.endswith(".poison_message.1")]
        await asyncio.sleep(0.1)
    assert len(poison) == 1
    # Filed under the stream sequence, so the dead-letter handler finds it from the advisory alone.
    assert poison[0] == f"poison-upper-{ack.seq}.0000.poison_message.1"
    entry = await harness.saga._log.get(poison[0])
    record = orjson.loads(entry.value)
    assert record["data"]["stream_seq"] == ack.seq and record["data"]["error"]
    if b"abc" in body:
        assert record["data"]["message_id"] == "abc"  # what could be salvaged: the saga it claims
    else:
        assert "message_id" not in record["data"]
    await asyncio.sleep(harness.settings.ack_wait_s + 0.5)
    info = await harness.consumer("upper")
    assert info.num_redelivered == 0 and info.num_ack_pending == 0
    assert harness.executions("upper") == []
    assert rt.ready  # the actor keeps serving


async def test_misrouted_message_goes_to_the_error_handler(harness: Harness) -> None:
    for cls in (Upper, Catcher):
        await harness.run_actor(cls)
    message = await harness.submit(["count", "done"], "hello")
    # Publish the same message to the wrong actor on purpose.
    from saga.transport import publish

    wrong = message.model_copy(update={"message_id": message.message_id})
    await harness.js.publish(subject_for("upper"), wrong.to_bytes())

    state = await harness.wait_terminal(message.message_id)
    assert state.status == "escalated"
    events = await harness.events(message.message_id)
    assert any(e.kind == "step_failed" and e.data.get("kind") == "misrouted" for e in events)
    assert harness.executions("upper") == []
    del publish


async def test_two_replicas_share_the_work_and_process_each_message_once(harness: Harness) -> None:
    # Steps of 50 ms, at most two in flight per replica: one replica alone cannot take the whole burst.
    a = await harness.run_actor(Slow, concurrency=2)
    b = await harness.run_actor(Slow, concurrency=2)
    await harness.run_actor(Done)
    messages = await asyncio.gather(*(harness.submit(["slow", "done"], f"message {i} sleep:0.05")
                                      for i in range(40)))

    for m in messages:
        assert (await harness.wait_terminal(m.message_id)).status == "completed"

    ids = sorted(m.message_id for m in messages)
    handled_a, handled_b = a.actor.handled, b.actor.handled  # type: ignore[attr-defined]
    assert handled_a and handled_b, (len(handled_a), len(handled_b))  # both replicas took part
    assert sorted(handled_a + handled_b) == ids  # every message handled exactly once, by one of them
    assert sorted(m for (_, m, _, _) in harness.executions("slow")) == ids


async def test_a_step_longer_than_the_ack_wait_is_kept_alive_and_runs_once(harness: Harness) -> None:
    """The heartbeat: a handler that runs for 2.5 ack waits is not redelivered meanwhile (JetStream would hand
    the message to another delivery after one ack wait without it)."""
    slow = await harness.run_actor(Slow)
    await harness.run_actor(Done)
    message = await harness.submit(["slow", "done"], f"sleep:{harness.settings.ack_wait_s * 2.5}")

    assert (await harness.wait_terminal(message.message_id)).status == "completed"
    assert slow.actor.handled == [message.message_id]  # type: ignore[attr-defined]
    assert [(kind, actor) for kind, actor, _ in kinds(await harness.events(message.message_id))] == [
        ("saga_started", "gateway"), ("step_completed", "slow"), ("step_completed", "done"),
        ("saga_completed", "done")]  # no `redelivered`


class SlowGenerator(Slow):
    """A slow step of an actor that calls an LLM (its step may last its LLM calls' timeouts and retries)."""

    name = "response_generator"


@pytest.mark.integration  # starts its own nats-server
async def test_a_stopping_actor_waits_for_its_step_in_flight_as_long_as_that_step_can_last(tmp_path) -> None:
    """The drain follows the LLM settings (the formula that sizes the pod's grace period), and a step in flight
    when the actor is asked to stop finishes and is recorded before the process lets go."""
    h = await Harness(tmp_path, llm_timeout_s=45.0, llm_retries=2).start()
    try:
        generator = await h.run_actor(SlowGenerator)
        assert generator.drain_timeout_s == step_drain_s("response_generator", h.settings) == 3 * 45.0 + 10
        assert (await h.run_actor(Done)).drain_timeout_s == step_drain_s("done", h.settings) == 10
        message = await h.submit(["response_generator", "done"], "sleep:1.5")
        while not h.executions("response_generator", message.message_id):
            await asyncio.sleep(0.05)

        await generator.stop()  # the drain the runtime chose (not the harness's short one)

        assert (await h.wait_terminal(message.message_id)).status == "completed"
        events = await h.events(message.message_id)
        assert [e.actor for e in events if e.kind == "step_completed"] == ["response_generator", "done"]
    finally:
        await h.close()


async def test_run_until_stopped_calls_on_started_once_started_and_before_the_work(harness: Harness) -> None:
    """The hook of a process's end of startup (`supportmesh actor` freezes the startup heap there): called once,
    after the runtime is ready, and the actor then works and stops as usual."""
    from actors.runtime import ActorRuntime

    rt = ActorRuntime(Done(), harness.settings, recovery=False)
    seen: list[bool] = []
    running = asyncio.create_task(rt.run_until_stopped(on_started=lambda: seen.append(rt.ready)))
    message = await harness.submit(["done"], "hello")

    assert (await harness.wait_terminal(message.message_id)).status == "completed"
    assert seen == [True]
    rt.request_stop()
    await asyncio.wait_for(running, timeout=30)
    assert not rt.ready


@pytest.mark.parametrize("route,hops", [
    (["upper", "count", "done"], ["upper", "count", "done"]),
    # A router that rewrites the rest of the route (here: drops `done`) records it in its step_completed.
    (["upper", "catcher", "done"], ["upper", "catcher"]),
])
async def test_a_step_writes_its_completion_and_the_next_hop_and_nothing_else(harness: Harness, route: list[str],
                                                                               hops: list[str]) -> None:
    """The happy path's JetStream writes, seen on the wire: per step its `step_completed` and the next hop; the
    saga's start and end write their own records once. (Acks update the consumer; they store no message.)"""
    for cls in (Upper, Count, Done, Catcher):
        await harness.run_actor(cls)
    log_writes: list[str] = []
    published: list[str] = []
    other_writes: list[str] = []

    async def seen(msg: Any) -> None:
        if msg.subject.startswith("$KV.saga_log."):
            log_writes.append(msg.subject.split(".")[-1])  # the event's kind (once-per-step keys end with it)
        elif msg.subject.startswith(("$KV.saga_state.", "$KV.saga_running.")):
            other_writes.append(msg.subject.split(".")[1])
        elif not msg.subject.startswith("$KV."):
            published.append(msg.subject.rsplit(".", 1)[1])

    subs = [await harness.nc.subscribe(s, cb=seen) for s in ("$KV.>", subject_for(">"))]
    await harness.nc.flush()
    message = await harness.submit(route, "count my writes")
    assert (await harness.wait_terminal(message.message_id)).status in ("completed", "escalated")
    deadline = time.monotonic() + 10  # the copies reach this subscriber on their own schedule
    while "saga_completed" not in log_writes or len(other_writes) < 3:
        assert time.monotonic() < deadline, (log_writes, other_writes)
        await asyncio.sleep(0.05)
    await harness.nc.flush()
    for sub in subs:
        await sub.unsubscribe()

    assert log_writes == ["saga_started", *["step_completed"] * len(hops), "saga_completed"]
    assert published == hops  # the first hop is the start's; each step publishes the next
    # The saga's place in the running index at the start (its state is that entry's value) and at the end, and
    # its state once, at the end: a saga that never changed status has no state of its own until then.
    assert sorted(other_writes) == ["saga_running", "saga_running", "saga_state"], other_writes


async def test_an_actor_keeps_a_pull_request_open_instead_of_asking_per_message(harness: Harness) -> None:
    """One pull request serves many messages: when idle one per expiry (1 s), not one (or two) per message."""
    upper = await harness.run_actor(Upper)
    await harness.run_actor(Done)
    requests: list[float] = []

    async def seen(_msg: Any) -> None:
        requests.append(time.monotonic())

    # A plain subscriber gets a copy of every pull request the actor sends to its consumer.
    sub = await harness.nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{harness.settings.stream_name}.upper", cb=seen)
    await harness.nc.flush()
    started, count = time.monotonic(), 30
    for n in range(count):
        message = await harness.submit(["upper", "done"], f"one at a time {n}")
        assert (await harness.wait_terminal(message.message_id)).status == "completed"
    elapsed = time.monotonic() - started
    await sub.unsubscribe()

    # Each open request lasts its expiry; one more may be on its way when the count starts or ends.
    assert len(requests) <= elapsed / upper.fetch_timeout_s + 3, (len(requests), elapsed)
    assert len(requests) < count / 2


async def test_deleted_consumer_heals(harness: Harness) -> None:
    await harness.run_actor(Upper)
    await harness.run_actor(Done)
    await harness.js.delete_consumer(harness.settings.stream_name, "upper")
    message = await harness.submit(["upper", "done"], "after the consumer was deleted")
    assert (await harness.wait_terminal(message.message_id)).status == "completed"


async def test_replaying_the_saga_log_rebuilds_the_message(harness: Harness) -> None:
    from saga.replay import replay

    for cls in (Upper, Flaky, Done, Catcher):
        await harness.run_actor(cls)
    ok = await harness.submit(["upper", "done"], "replay me")
    failed = await harness.submit(["upper", "flaky", "done"], "fail-permanent")
    await harness.wait_terminal(ok.message_id)
    await harness.wait_terminal(failed.message_id)

    rebuilt = replay(await harness.events(ok.message_id), Message)
    assert rebuilt is not None and rebuilt.route.current_step == 2
    assert rebuilt.payload.api_data == {"upper": "REPLAY ME", "done": True}

    rebuilt = replay(await harness.events(failed.message_id), Message)
    assert rebuilt is not None
    # upper ran, flaky failed for good, the runtime detoured to the error handler, which ended the saga.
    assert rebuilt.route.steps == ["upper", "flaky", "catcher"] and rebuilt.route.current_step == 3
    assert rebuilt.payload.api_data["catcher"] == "permanent"
    assert rebuilt.metadata.outcome == "escalated"
    assert rebuilt.payload.error is not None and rebuilt.payload.error.actor == "flaky"


async def test_consumer_is_updated_in_place_and_replaced_only_when_the_update_is_refused(harness: Harness) -> None:
    from saga.transport import consumer_config, ensure_consumer

    settings, js = harness.settings, harness.js
    await ensure_consumer(js, settings, consumer_config("upper", subject=subject_for("upper"), ack_wait_s=2, max_deliver=4, max_ack_pending=8))
    await js.publish(subject_for("upper"), b"in flight")
    sub = await js.pull_subscribe_bind("upper", stream=settings.stream_name)
    assert len(await sub.fetch(1, timeout=5)) == 1  # delivered, not acked yet
    before = await harness.consumer("upper")

    # A replica of another version (a rolling deploy) binds with another ack wait: same consumer, state kept.
    await ensure_consumer(js, settings, consumer_config("upper", subject=subject_for("upper"), ack_wait_s=30, max_deliver=4, max_ack_pending=8))
    updated = await harness.consumer("upper")
    assert updated.config.ack_wait == 30
    assert updated.created == before.created
    assert updated.num_ack_pending == 1 and updated.delivered.consumer_seq == before.delivered.consumer_seq == 1

    await sub.unsubscribe()

    # A change JetStream refuses to make in place (a push consumer left by an old deployment becoming a pull
    # consumer): only then is the consumer replaced.
    legacy = consumer_config("count", subject=subject_for("count"), ack_wait_s=2, max_deliver=4, max_ack_pending=8)
    legacy.deliver_subject = "legacy.count"
    await js.add_consumer(settings.stream_name, legacy)
    await ensure_consumer(js, settings, consumer_config("count", subject=subject_for("count"), ack_wait_s=2, max_deliver=4, max_ack_pending=8))
    replaced = await harness.consumer("count")
    assert replaced.config.deliver_subject is None


async def test_saga_events_are_counted_once_where_they_are_recorded(harness: Harness) -> None:
    from prometheus_client import REGISTRY

    from saga.log import SagaEvent

    kinds_counted = ("saga_started", "step_started", "step_completed", "saga_completed", "compensation_started")

    def counts() -> dict[str, float]:
        return {k: REGISTRY.get_sample_value("supportmesh_saga_events_total", {"kind": k}) or 0.0
                for k in kinds_counted}

    for cls in (Upper, Done):
        await harness.run_actor(cls)
    before = counts()
    message = await harness.submit(["upper", "done"], "count me")
    await harness.wait_terminal(message.message_id)
    # An event written straight to the saga log (as the escalation router writes compensations) counts too;
    # writing the same fact again does not.
    compensation = SagaEvent(message_id=message.message_id, kind="compensation_started",
                             actor="escalation_router", step_index=0, seq=1)
    assert await harness.saga.record(compensation)
    assert not await harness.saga.record(compensation)

    after = counts()
    assert {k: after[k] - before[k] for k in kinds_counted} == {
        "saga_started": 1, "step_started": 0, "step_completed": 2, "saga_completed": 1, "compensation_started": 1}


async def test_actor_metrics_carry_trace_exemplars(harness: Harness) -> None:
    import httpx

    from supportmesh.natsserver import free_port

    port = free_port()
    harness.spawn_actor("tests.support.toy_actors:Upper", env={"SUPPORTMESH_METRICS_PORT": str(port)})
    await harness.run_actor(Done)
    message = await harness.submit(["upper", "done"], "trace my latency")
    assert (await harness.wait_terminal(message.message_id, timeout=30)).status == "completed"
    step = next(e for e in await harness.events(message.message_id) if e.kind == "step_completed")
    assert step.actor == "upper" and step.trace_id

    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics",
                                    headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [line.split(" # ", 1)[1] for line in response.text.splitlines()
                 if line.startswith('supportmesh_actor_processing_seconds_bucket{actor="upper"') and " # " in line]
    # The step's latency links to the step's trace.
    assert any(f'trace_id="{step.trace_id}"' in e for e in exemplars), exemplars


@pytest.fixture
async def answering(tmp_path, redis_url):
    """A harness with Redis, so the real response aggregator can run (history in SQLite, session, result)."""
    h = Harness(tmp_path, redis_url=redis_url)
    await h.start()
    try:
        yield h
    finally:
        await h.close()


def assert_failed_and_answered_through_the_history(h: Harness, message: Message, events: list[SagaEvent],
                                                   result: ChatResult | None) -> None:
    """A failed saga's answer was delivered by the response aggregator: the customer's and the agent's rows are
    in the history (the agent's is the answer), and the route ended with the saga failed."""
    assert result is not None and result.status == "escalated"
    assert_answered_without_a_ticket(message, events, result)
    assert h.history_rows(message.message_id) == [("customer", message.payload.customer_message),
                                                  ("agent", result.response)]
    assert [e.kind for e in events if e.kind == "saga_failed"] == ["saga_failed"]
    assert [(e.actor, e.data["status"]) for e in events if e.kind == "saga_completed"] == [
        ("response_aggregator", "failed")]


def assert_answered_without_a_ticket(message: Message, events: list[SagaEvent], result: ChatResult) -> None:
    """No process that failed the saga could open a handoff ticket (no hook): the answer promises no colleague,
    gives the reference, and the saga log says there is no ticket."""
    assert "colleague" not in result.response and f"reference {message.message_id}" in result.response
    failed = [e for e in events if e.kind == "saga_failed"]
    assert failed and all((e.data["ticket_id"], e.data["ticket"]) == (None, "none") for e in failed)


async def test_saga_whose_error_handler_fails_for_good_is_failed_and_answered(answering: Harness) -> None:
    h = answering
    await h.run_actor(Flaky)
    await h.run_aggregator()
    subject, replies = await h.reply_inbox()
    # The failing step is the error handler itself: nobody is left to decide.
    message = await h.submit(["flaky"], "fail-permanent", error_handler="flaky", reply_subject=subject)

    state = await h.wait_terminal(message.message_id)

    assert state.status == "failed"
    events = await h.events(message.message_id)
    # The customer is answered through the aggregator (GET /api/chat/{id} reads the stored result; the waiting
    # gateway gets the reply; the history shows both sides, as for any message).
    result = await h.results.get(message.message_id)
    assert_failed_and_answered_through_the_history(h, message, events, result)
    await wait_until(lambda: len(replies) >= 1)
    assert [r.message_id for r in replies] == [message.message_id]
    await asyncio.sleep(h.settings.ack_wait_s + 0.5)
    assert len(h.executions("flaky", message.message_id)) == 1  # no loop
    assert len(replies) == 1


async def test_failed_sagas_answer_failing_in_the_aggregator_is_given_directly_without_a_loop(harness: Harness) -> None:
    """The aggregator cannot deliver a failed saga's answer either: the answer is stored and sent from its
    runtime, and the failure never goes back to the error handler (which already failed)."""
    await harness.run_actor(Flaky)
    await harness.run_actor(BrokenAggregator)
    subject, replies = await harness.reply_inbox()
    message = await harness.submit(["flaky"], "fail-permanent", error_handler="flaky", reply_subject=subject)

    state = await harness.wait_terminal(message.message_id)

    assert state.status == "failed"
    result = await harness.results.get(message.message_id)
    assert result is not None and result.status == "escalated"
    assert_answered_without_a_ticket(message, await harness.events(message.message_id), result)
    await wait_until(lambda: len(replies) >= 1)
    await asyncio.sleep(harness.settings.ack_wait_s + 0.5)
    assert len(harness.executions("flaky", message.message_id)) == 1  # the error handler was not asked again
    assert [s for (_, _, s, _) in harness.executions("response_aggregator", message.message_id)] == [1]
    assert [r.message_id for r in replies] == [message.message_id]
    events = await harness.events(message.message_id)
    assert [(e.actor, e.step_index) for e in events if e.kind == "saga_failed"] == [
        ("flaky", 0), ("response_aggregator", 1)]


class FlakyWithHangingTickets(Flaky):
    """An error handler whose ticket system never answers."""

    async def on_saga_failed(self, message: Message, history: list[SagaEvent], ctx: FailureContext) -> str | None:
        await asyncio.Event().wait()
        return "never"


@pytest.mark.integration  # starts its own nats-server
async def test_a_hanging_ticket_hook_does_not_hold_the_answer_back(tmp_path) -> None:
    h = await Harness(tmp_path, api_timeout_s=0.2).start()
    try:
        await h.run_actor(FlakyWithHangingTickets)
        await h.run_actor(BrokenAggregator)  # its delivery of the answer fails too: the saga still ends
        message = await h.submit(["flaky", "response_aggregator"], "fail-permanent", error_handler="flaky")

        assert (await h.wait_terminal(message.message_id)).status == "failed"

        [failed, *_] = [e for e in await h.events(message.message_id) if e.kind == "saga_failed"]
        assert (failed.data["ticket_id"], failed.data["ticket"]) == (None, "failed")
        assert failed.data["ticket_error"].startswith("TimeoutError")
        result = await h.results.get(message.message_id)
        assert result is not None and "colleague" not in result.response
    finally:
        await h.close()


async def test_poison_message_of_a_running_saga_answers_its_customer_once(answering: Harness) -> None:
    harness = answering
    await harness.run_actor(Upper)
    await harness.run_actor(Catcher)  # the error handler: also consumes the MSG_TERMINATED advisories
    await harness.run_aggregator()
    subject, replies = await harness.reply_inbox()
    waiting = await harness.submit(["upper", "done"], "my hop gets corrupted", reply_subject=subject, publish=False)
    # The saga's hop arrives corrupted (say, from a replica of another version): it can never run.
    corrupted = orjson.dumps({"message_id": waiting.message_id, "session_id": "s1", "route": "corrupted",
                              "metadata": {"reply_subject": subject}})
    ack = await harness.js.publish(subject_for("upper"), corrupted)
    stranger = await harness.js.publish(subject_for("upper"), orjson.dumps({"message_id": "nobody", "route": 1}))

    state = await harness.wait_terminal(waiting.message_id)

    assert state.status == "failed"
    failed = [e for e in await harness.events(waiting.message_id) if e.kind == "saga_failed"]
    assert len(failed) == 1 and failed[0].data["reason"] == "poison"
    assert failed[0].data["poison_record"] == f"poison-upper-{ack.seq}.0000.poison_message.1"
    result = await harness.results.get(waiting.message_id)
    assert result is not None and result.status == "escalated"
    assert harness.history_rows(waiting.message_id) == [("customer", "my hop gets corrupted"),
                                                        ("agent", result.response)]
    await wait_until(lambda: len(replies) >= 1)
    # A poison message that names no saga of ours is recorded and seen by recovery, and answers no one.
    await wait_until_async(lambda: harness.saga.get_event(f"poison-upper-{stranger.seq}", 0, "dead_lettered"))
    assert await harness.results.get("nobody") is None
    await asyncio.sleep(harness.settings.ack_wait_s + 0.5)
    assert [r.message_id for r in replies] == [waiting.message_id]  # answered once
    info = await harness.consumer("upper")  # never looped: delivered once each, nothing pending
    assert info.num_redelivered == 0 and info.num_ack_pending == 0 and info.num_pending == 0
    assert harness.executions("upper") == []


async def test_resumptions_of_one_step_by_the_sweeper_and_the_router_are_both_kept(harness: Harness) -> None:
    """Both recovery sources may resume the same step for the first time: each keeps its record, so neither
    budget is undercounted."""
    from actors.escalation import redeliveries

    for source in ("sweeper", "escalation_router"):
        event = SagaEvent(message_id="m5", kind="redelivered", actor="escalation_router", step_index=3, seq=1,
                          data={"source": source})
        assert await harness.saga.record(event) is True
    history = await harness.events("m5")
    assert sorted(e.data["source"] for e in history) == ["escalation_router", "sweeper"]
    assert redeliveries(history) == 1


async def wait_until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition (no fixed sleeps: the machine may be busy)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def wait_until_async(fetch, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until an async lookup returns something."""
    deadline = time.monotonic() + timeout
    while not await fetch():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
