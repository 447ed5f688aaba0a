"""Saga reads never answer 500: the history is read with JetStream's batched direct get (no consumer per
request), and a store that does not answer gives 503 with Retry-After, counted in a metric."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import httpx
import pytest
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from prometheus_client import REGISTRY

from saga.direct import live_entries, read_subjects
from saga.log import LOG_BUCKET, RUNNING_BUCKET, STATE_BUCKET, SagaEvent, SagaLog

from tests.support.identity import AUTH


def event(message_id: str, step: int, kind: str = "step_started") -> SagaEvent:
    return SagaEvent(message_id=message_id, kind=kind, actor="toy", step_index=step)


async def test_history_reads_every_event_in_order_across_pages_without_a_consumer(harness) -> None:
    for mid in ("saga-a", "saga-ab", "saga-b"):  # prefixes of each other: the filter is per token, not per prefix
        for step in range(9):
            await harness.saga.record(event(mid, step))
            await harness.saga.record(event(mid, step, "step_completed"))
    consumers_before = (await harness.js.stream_info(f"KV_{LOG_BUCKET}")).state.consumer_count

    paged = await read_subjects(harness.nc, f"KV_{LOG_BUCKET}", f"$KV.{LOG_BUCKET}.saga-a.>", batch=4)
    history = await harness.saga.history("saga-a")

    assert [m.seq for m in paged] == sorted(m.seq for m in paged) and len(paged) == 18
    assert [(e.step_index, e.kind) for e in history] == [
        (s, k) for s in range(9) for k in ("step_started", "step_completed")]
    assert {e.message_id for e in history} == {"saga-a"}
    assert await harness.saga.history("no-such-saga") == []
    assert (await harness.js.stream_info(f"KV_{LOG_BUCKET}")).state.consumer_count == consumers_before == 0


async def test_listings_of_running_and_all_sagas_never_come_back_short(harness) -> None:
    """nats-py's `kv.keys()` came back empty about once in a hundred listings of a full bucket (its end marker
    raced the replay), so a sweep pass could see no running saga. Every listing here must be whole."""
    ids = [f"list-{i}" for i in range(40)]
    for mid in ids:
        await harness.saga.set_state(mid, status="running", step_index=0, actor="gateway", expected_revision=0)
    for mid in ids[:10]:  # ended: their running-index entries are deleted (delete markers stay in the stream)
        await harness.saga.set_state(mid, status="completed", step_index=1, actor="response_aggregator")
    # A saga deleted outright is listed nowhere (its index entry holds a state too: both go).
    await asyncio.gather(harness.saga._state.delete(ids[10]), harness.saga._running.delete(ids[10]))

    listings = [set(await live_entries(harness.nc, STATE_BUCKET)) for _ in range(300)]
    running = {s.message_id for s in await harness.saga.running()}
    every = {s.message_id: s for s in await harness.saga.states()}

    assert [len(keys) for keys in listings if keys != set(ids) - {ids[10]}] == []
    assert running == set(ids[11:])
    assert set(every) == set(ids) - {ids[10]}
    assert {every[mid].status for mid in ids[:10]} == {"completed"} and every[ids[11]].revision > 0


async def test_ended_sagas_leave_nothing_in_the_running_index_for_the_sweeper_to_read(harness) -> None:
    """An ended saga's index entry is purged with a marker that expires: a sweep reads the running sagas and
    the last moments' markers, not one marker per saga of the bucket's whole TTL (a week by default)."""
    harness.saga.marker_ttl_s = 1.0
    ids = [f"ended-{i}" for i in range(30)]
    for mid in ids:
        await harness.saga.set_state(mid, status="running", step_index=0, actor="gateway", expected_revision=0)
        await harness.saga.set_state(mid, status="escalated" if mid == ids[0] else "completed", step_index=1,
                                     actor="response_aggregator")
    await harness.saga.set_state("still-running", status="running", step_index=0, actor="gateway",
                                 expected_revision=0)

    async def stored() -> int:
        return (await harness.js.stream_info(f"KV_{RUNNING_BUCKET}")).state.messages

    deadline = time.monotonic() + 30
    while await stored() > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await stored() == 1  # the running saga's entry; the 30 markers are gone
    assert [s.message_id for s in await harness.saga.running()] == ["still-running"]
    # An escalated saga reopened by recovery is indexed again, and taken out again when it ends.
    await harness.saga.set_state(ids[0], status="running", step_index=1, actor="recovery", allow_reopen=True)
    assert {s.message_id for s in await harness.saga.running()} == {"still-running", ids[0]}
    await harness.saga.set_state(ids[0], status="completed", step_index=2, actor="response_aggregator")
    assert [s.message_id for s in await harness.saga.running()] == ["still-running"]


async def test_a_running_index_created_without_message_ttls_gets_them(harness) -> None:
    """A bucket made by an older version may refuse per-message TTLs; opening the log turns them on, or every
    purge of an ended saga would fail and leave its entry for the sweeper to drop on every pass."""
    await harness.js.delete_key_value(RUNNING_BUCKET)
    await harness.js.add_stream(StreamConfig(
        name=f"KV_{RUNNING_BUCKET}", subjects=[f"$KV.{RUNNING_BUCKET}.>"], max_msgs_per_subject=1,
        allow_rollup_hdrs=True, deny_delete=True, allow_direct=True, storage=StorageType.FILE))
    assert not (await harness.js.stream_info(f"KV_{RUNNING_BUCKET}")).config.allow_msg_ttl

    log = await SagaLog.open(harness.js)
    await log.set_state("old-index", status="running", step_index=0, actor="gateway", expected_revision=0)
    await log.set_state("old-index", status="completed", step_index=1, actor="response_aggregator")

    assert (await harness.js.stream_info(f"KV_{RUNNING_BUCKET}")).config.allow_msg_ttl
    assert await log.running() == []


async def test_a_saga_that_never_changed_status_has_its_state_in_the_running_index_only(harness) -> None:
    """The start writes the running index's entry (its value is the state) and no `saga_state` key; every
    reader finds the state there, the sweeper too; the end creates the state without a read and takes the
    saga out of the index. A saga that changed status meanwhile refuses that create and is moved as usual."""
    from saga.transport import record_start

    quiet = await harness.submit(["a", "b"], publish=False)  # started, then nothing: as the sweeper finds it
    moved = await harness.submit(["a", "b"], publish=False)
    state_kv = await harness.js.key_value(STATE_BUCKET)
    assert set(await live_entries(harness.nc, STATE_BUCKET)) == set()

    first = await harness.saga.state(quiet.message_id)
    assert first is not None and (first.status, first.revision, first.owner, first.session_id) == (
        "running", 0, quiet.owner, "s1")
    assert first.started_at == quiet.metadata.created_at and first.trace_id == quiet.metadata.trace_id
    assert {s.message_id for s in await harness.saga.running()} == {quiet.message_id, moved.message_id}
    assert {s.message_id for s in await harness.saga.states()} == {quiet.message_id, moved.message_id}

    # A transition of a saga read from the index creates its state (and leaves the index entry alone).
    await harness.saga.set_state(moved.message_id, status="compensating", step_index=1, actor="b")
    for message in (quiet, moved):  # the end, as the runtime's completion writes it: no read first
        assert await harness.saga.set_state(
            message.message_id, status="completed", step_index=1, actor="b", allow_reopen=True,
            expected_revision=0, session_id=message.session_id, trace_id=message.metadata.trace_id,
            owner=message.owner, started_at=message.metadata.created_at)
    for message in (quiet, moved):
        ended = await harness.saga.state(message.message_id)
        assert ended is not None and ended.status == "completed" and ended.revision
        assert ended.owner == message.owner and ended.started_at == message.metadata.created_at
        assert (await state_kv.get(message.message_id)).revision == ended.revision
    assert await harness.saga.running() == []
    # The repeated start of a finished saga (an Idempotency-Key retry) changes nothing and leaves no entry.
    assert await record_start(harness.saga, quiet) is False
    assert (await harness.saga.state(quiet.message_id)).status == "completed"
    assert await live_entries(harness.nc, RUNNING_BUCKET) == {}


async def test_a_reader_that_misses_a_state_written_between_its_reads_still_finds_it(harness) -> None:
    """The race `state()` is built for: its first read finds no `saga_state` key, then the saga ends (state
    written, index entry purged) before it reads the index. The purge marker sends it back to the state, which
    is there. An id nobody started costs two reads, not three (no marker to go back for)."""
    message = await harness.submit(["a", "b"], publish=False)
    saga = harness.saga
    real_read = saga._stored_state
    ended = False

    async def first_read_before_the_end(message_id: str):
        nonlocal ended
        if not ended:
            ended = True
            stored = await real_read(message_id)
            await saga.set_state(message_id, status="completed", step_index=1, actor="b", expected_revision=0,
                                 owner=message.owner, started_at=message.metadata.created_at)
            return stored
        return await real_read(message_id)

    saga._stored_state = first_read_before_the_end
    try:
        found = await saga.state(message.message_id)
    finally:
        del saga._stored_state
    assert found is not None and found.status == "completed" and found.revision

    reads: list[str] = []

    async def seen(msg) -> None:
        reads.append(msg.subject)

    sub = await harness.nc.subscribe("$JS.API.DIRECT.GET.>", cb=seen)
    await harness.nc.flush()
    assert await saga.state("nobody-started-this") is None
    await harness.nc.flush()
    await sub.unsubscribe()
    assert len(reads) == 2, reads


async def test_a_bucket_created_without_direct_gets_gets_them(harness) -> None:
    await harness.js.delete_key_value(LOG_BUCKET)
    await harness.js.create_key_value(KeyValueConfig(bucket=LOG_BUCKET, history=1, storage=StorageType.FILE))
    assert not (await harness.js.stream_info(f"KV_{LOG_BUCKET}")).config.allow_direct

    log = await SagaLog.open(harness.js)
    await log.record(event("old-bucket", 0))

    assert (await harness.js.stream_info(f"KV_{LOG_BUCKET}")).config.allow_direct
    assert [e.kind for e in await log.history("old-bucket")] == ["step_started"]


def unavailable_count(route: str) -> float:
    return REGISTRY.get_sample_value("supportmesh_gateway_unavailable_total", {"route": route}) or 0.0


async def test_reads_answer_503_with_retry_after_while_nats_is_down(gateway, harness) -> None:
    gw, client = gateway
    r = await client.post("/api/chat", json={"session_id": "s-down", "customer_email": "user@example.com",
                                             "message": "Where is my order 12345?"})
    message_id = r.json()["message_id"]
    before = {route: unavailable_count(route) for route in ("/api/sagas/{message_id}", "/api/chat/{message_id}")}
    harness.server.kill()
    try:
        for path, route in ((f"/api/sagas/{message_id}", "/api/sagas/{message_id}"),
                            (f"/api/chat/{message_id}", "/api/chat/{message_id}"),
                            (f"/api/chat/{message_id}/events", "/api/chat/{message_id}/events")):
            r = await client.get(path)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers["Retry-After"] == "1" and "unavailable" in r.json()["detail"]
        for route, count in before.items():
            assert unavailable_count(route) >= count + 1, route
    finally:
        harness.server.restart()
    # Back once the server is: the same reads answer again, with the saga recorded before the outage.
    deadline = time.monotonic() + 30
    while True:
        r = await client.get(f"/api/sagas/{message_id}")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.2)
    assert r.status_code == 200 and r.json()["events"][0]["kind"] == "saga_started"


async def hammer(gateways: list[str], count: int,
                 reading: asyncio.Event | None = None) -> list[tuple[str, int, str | None]]:
    """Start `count` chats (respond-async: they run while the reads come in), then read them 200 times at once
    through every gateway — their saga log, their outcome and their event stream (to its end). Returns
    (route, status, Retry-After) per read."""
    async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:  # signed in: the sagas' owner reads them
        async def chat(i: int) -> str:
            body = {"session_id": uuid.uuid4().hex, "message": f"Where is my order 12345? ({i})"}
            r = await client.post(f"{gateways[i % len(gateways)]}/api/chat", json=body,
                                  headers={"Prefer": "respond-async"})
            assert r.status_code == 202, r.text
            return r.json()["message_id"]

        ids = await asyncio.gather(*(chat(i) for i in range(count)))

        async def read(i: int) -> tuple[str, int, str | None]:
            base, mid, kind = gateways[i % len(gateways)], ids[i % len(ids)], ("saga", "chat", "events")[i % 3]
            if kind == "events":
                async with client.stream("GET", f"{base}/api/chat/{mid}/events") as r:
                    async for _ in r.aiter_bytes():
                        pass  # to the end: the stream closes after the saga's result
                    return kind, r.status_code, r.headers.get("Retry-After")
            r = await client.get(f"{base}/api/sagas/{mid}" if kind == "saga" else f"{base}/api/chat/{mid}")
            return kind, r.status_code, r.headers.get("Retry-After")

        tasks = [asyncio.create_task(read(i)) for i in range(200)]
        if reading is not None:
            reading.set()
        return list(await asyncio.gather(*tasks))


def no_5xx_but_503(results: list[tuple[str, int, str | None]]) -> None:
    bad = [r for r in results if r[1] not in (200, 202) and not (r[1] == 503 and r[2])]
    assert not bad, f"answers other than 200, 202 and 503 with Retry-After: {bad[:10]}"


@pytest.mark.e2e
@pytest.mark.timeout(400)  # the session mesh may start inside this test: up to 150 s on a slow machine
def test_200_concurrent_reads_during_a_load_answer_without_5xx(mesh) -> None:
    """Reads of running and finished sagas through both gateways while a load runs: every one answers."""
    gateways = mesh.endpoints.get("gateway_urls") or [mesh.gateway_url]
    results = asyncio.run(hammer(gateways, 40))
    no_5xx_but_503(results)
    answered = [r for r in results if r[1] in (200, 202)]
    assert len(answered) >= 190, f"only {len(answered)} of 200 reads answered: {results}"


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_reads_while_nats_server_stalls_answer_503_never_500(mesh) -> None:
    """nats-server stops answering (SIGSTOP: a stalled disk, a paused VM) for longer than the gateway's store
    timeout while 200 reads are in flight: they answer 503 with Retry-After, none 500, and the mesh goes on."""
    from gateway.state import STORE_TIMEOUT_S

    gateways = mesh.endpoints.get("gateway_urls") or [mesh.gateway_url]
    nats_pid = mesh.endpoints["nats_pid"]

    async def scenario() -> list[tuple[str, int, str | None]]:
        reading = asyncio.Event()
        reads = asyncio.create_task(hammer(gateways, 30, reading))
        await reading.wait()  # the chats are in; 200 reads are on their way
        os.kill(nats_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(STORE_TIMEOUT_S + 3)
        finally:
            os.kill(nats_pid, signal.SIGCONT)
        return await reads

    results = asyncio.run(scenario())
    no_5xx_but_503(results)
    assert any(r[1] == 503 for r in results), "the stall was never noticed: the test tested nothing"
    r = httpx.post(f"{gateways[0]}/api/chat", json={"session_id": uuid.uuid4().hex,
                                                   "message": "Where is my order 12345?"}, timeout=60, headers=AUTH)
    assert r.status_code in (200, 202), r.text  # the mesh goes on after the stall
