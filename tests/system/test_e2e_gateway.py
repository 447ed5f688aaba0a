"""End to end over HTTP against the whole local mesh (`supportmesh up`): the specification's flows, history,
session state, the saga API, server-sent events, the 202 path, follow-ups and two gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.support.chat_client import chat, follow
from tests.support.identity import AUTH
from tests.support.sse_client import read_events
from tests.support.waiting import cancel_until_done

from supportmesh.credentials import redis_url

pytestmark = pytest.mark.e2e


def saga_of(base: str, message_id: str) -> dict:
    r = httpx.get(f"{base}/api/sagas/{message_id}", timeout=10, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def completed_steps(saga: dict) -> list[str]:
    return [e["actor"] for e in saga["events"] if e["kind"] == "step_completed"]


def test_late_order_is_answered_from_tracking_data(mesh) -> None:
    r = chat(mesh.gateway_url, "My order 12345 is late!")

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "resolved"
    assert "Distribution Center" in body["response"]  # grounded in the tracking API's data
    assert body["trace_id"] and len(body["trace_id"]) == 32
    saga = saga_of(mesh.gateway_url, body["message_id"])
    assert saga["state"]["status"] == "completed"
    assert completed_steps(saga) == ["sentiment_analyzer", "intent_analyzer", "context_retriever",
                                     "decision_router", "response_generator", "guardrail_validator",
                                     "response_aggregator"]


def test_refund_is_executed_exactly_once(mesh) -> None:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()  # order 12345 not yet refunded
    r = chat(mesh.gateway_url, "I want a refund for order 12345")

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "resolved"
    assert body["action_plan"]["action"] == "refund" and body["action_plan"]["approved"] is True
    actions = httpx.get(f"{mesh.mocks_url}/orders/12345/actions", timeout=10).json()["actions"]
    mine = [a for a in actions if body["message_id"] in a["idempotency_key"]]
    assert len(mine) == 1 and mine[0]["type"] == "refund" and mine[0]["status"] == "active"
    saga = saga_of(mesh.gateway_url, body["message_id"])
    assert "execution_coordinator" in completed_steps(saga)
    executed = [e for e in saga["events"] if e["kind"] == "action_executed"]
    assert len(executed) == 1 and executed[0]["data"]["action_id"] == mine[0]["action_id"]


def test_critical_sentiment_is_escalated_to_a_human(mesh) -> None:
    r = chat(mesh.gateway_url, "This is fraud, I will call my lawyer")

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "escalated"
    tickets = httpx.get(f"{mesh.mocks_url}/tickets", params={"message_id": body["message_id"]}, timeout=10).json()
    assert len(tickets["tickets"]) == 1
    saga = saga_of(mesh.gateway_url, body["message_id"])
    assert saga["state"]["status"] == "escalated"
    assert "escalation_router" in completed_steps(saga)
    assert "response_generator" not in completed_steps(saga)


def test_history_rows_and_session_state(mesh) -> None:
    session = uuid.uuid4().hex
    first = chat(mesh.gateway_url, "Where is my order 12345?", session=session).json()
    second = chat(mesh.gateway_url, "This is the worst service, fraud!", session=session).json()

    history = httpx.get(f"{mesh.gateway_url}/api/sessions/{session}/history", timeout=10,
                        headers=AUTH).json()["messages"]
    assert [(m["sender"], m["message_id"].split(":")[0]) for m in history] == [
        ("customer", first["message_id"]), ("agent", first["message_id"]),
        ("customer", second["message_id"]), ("agent", second["message_id"])]
    assert history[1]["content"] == first["response"]

    r = redis.Redis.from_url(redis_url(mesh.endpoints), decode_responses=True)
    state = json.loads(r.get(f"session:{session}:state"))
    # Escalated with a handoff ticket: a person has the session now (the status the chat route reads).
    assert state["last_message_id"] == second["message_id"] and state["status"] == "handover"
    assert r.hget(f"session:{session}:handover", "message_id") == second["message_id"]
    assert 0 < r.ttl(f"session:{session}:state")
    context = json.loads(r.get(f"session:{session}:context"))
    assert context["customer_id"] == "cust_001" and context["customer_email"] == "user@example.com"


def test_follow_up_uses_the_order_of_the_previous_turn(mesh) -> None:
    session = uuid.uuid4().hex
    chat(mesh.gateway_url, "Where is my order 12345?", session=session)
    r = chat(mesh.gateway_url, "and when will it arrive?", session=session)

    body = r.json()
    saga = saga_of(mesh.gateway_url, body["message_id"])
    context = next(e for e in saga["events"] if e["kind"] == "step_completed" and e["actor"] == "context_retriever")
    assert context["data"]["enrichment"]["context"]["order"]["order_id"] == "12345"


def test_saga_events_stream_in_order_and_end_with_the_result(mesh) -> None:
    body = chat(mesh.gateway_url, "My order 12345 is late!").json()

    events = [(kind, data) for kind, data, _ in read_events(mesh.gateway_url, body["message_id"])]
    assert events[0][0] == "saga" and events[0][1]["kind"] == "saga_started"
    assert events[-1][0] == "result" and events[-1][1]["message_id"] == body["message_id"]
    saga_events = [e for k, e in events if k == "saga"]
    assert [e["kind"] for e in saga_events][-1] == "saga_completed"
    steps = [e["step_index"] for e in saga_events if e["kind"] == "step_completed"]
    assert steps == sorted(steps)


def test_slow_saga_answers_202_then_the_outcome(mesh) -> None:
    faults = {"GET /customers/{email}": {"latency_ms": 3500}}
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    body = {"session_id": uuid.uuid4().hex, "message": "My order 12345 is late!"}
    try:
        r = httpx.post(f"{mesh.gateway_url}/api/chat", json=body, timeout=30, headers=AUTH)
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()

    assert r.status_code == 202, r.text
    message_id = r.json()["message_id"]
    assert r.json()["status"] == "processing"
    outcome = follow(mesh.gateway_url, message_id)
    assert outcome.status_code == 200 and outcome.json()["status"] == "resolved"


def replies_by_path(base: str) -> dict[str, float]:
    """The gateway's count of answers by how they reached it (its reply subject, or KV after the deadline)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {via: float(n) for via, n in re.findall(r'supportmesh_gateway_replies_total\{via="(\w+)"\} (\S+)', text)}


def test_replies_reach_the_right_gateway_instance(mesh) -> None:
    urls = mesh.endpoints["gateway_urls"]
    assert len(urls) == 2
    # Concurrent chats on both instances: each reply must come back on the subject of the instance that
    # published the message. A misrouted one would still end as 200, read from KV once the deadline has passed;
    # the gateway counts those separately. So every chat answered *before* the deadline came by its own subject,
    # and only one that took the whole deadline (a busy machine: the reply was on its way when it ran out) may
    # have been read from KV. One answered after the deadline (202) is followed to its outcome. A round in which
    # an instance answered nothing before the deadline checks nothing there: up to three rounds, so a loaded
    # machine gets another chance instead of a failure that says nothing about routing.
    deadline_s = float(mesh.env["SUPPORTMESH_CHAT_DEADLINE_S"])
    for round_ in range(3):
        checked = replies_round(urls, deadline_s, round_)
        if checked:
            break
    assert checked, "no round had a chat answered before the deadline on both instances: nothing was checked"


def replies_round(urls: list[str], deadline_s: float, round_: int) -> bool:
    """One round of 6 concurrent chats per instance; asserts the replies' routing; False when an instance
    answered none of its chats before the deadline (the round checked nothing there)."""
    before = {url: replies_by_path(url) for url in urls}
    jobs = [(url, f"Where is my order 12345? ({round_}.{i})") for i in range(6) for url in urls]
    answers: dict[str, list[tuple[int, float, httpx.Response]]] = {url: [] for url in urls}

    def send(url: str, text: str) -> None:
        body = {"session_id": uuid.uuid4().hex, "message": text}
        started = time.monotonic()
        r = httpx.post(f"{url}/api/chat", json=body, timeout=30, headers=AUTH)
        took = time.monotonic() - started
        answers[url].append((r.status_code, took, follow(url, r.json()["message_id"]) if r.status_code == 202 else r))

    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    checked = True
    for url in urls:
        after = replies_by_path(url)
        assert [r.status_code for _, _, r in answers[url]] == [200] * 6, [r.text for _, _, r in answers[url]]
        in_time = sum(1 for first, _, _ in answers[url] if first == 200)
        before_deadline = sum(1 for first, took, _ in answers[url] if first == 200 and took < deadline_s)
        by_subject, by_kv = after["subject"] - before[url]["subject"], after["kv"] - before[url]["kv"]
        assert by_subject + by_kv == in_time, (url, in_time, before[url], after)
        assert by_subject >= before_deadline, f"{url} read answers from KV before the deadline: replies went astray"
        checked = checked and before_deadline >= 1
    return checked


def test_health_readiness_metrics_no_docs(mesh) -> None:
    base = mesh.gateway_url
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["status"] == "ready" and set(ready["checks"]) == {"nats", "stream", "redis", "sqlite"}
    assert "supportmesh_chat_latency_seconds" in httpx.get(f"{base}/metrics").text
    # The API docs are off unless configured (SUPPORTMESH_API_DOCS).
    assert httpx.get(f"{base}/openapi.json").status_code == 404
    assert httpx.get(f"{base}/docs").status_code == 404
    assert httpx.get(f"{base}/api/chat/{'f' * 32}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("body,field", [
    ({"session_id": "s1", "customer_email": "not-an-email", "message": "hi"}, "customer_email"),
    ({"session_id": "s1", "customer_email": "user@example.com", "message": ""}, "message"),
    ({"session_id": "s1", "customer_email": "user@example.com", "message": "   "}, "message"),
    ({"session_id": "s1", "customer_email": "user@example.com", "message": "x" * 4001}, "message"),
    ({"session_id": "bad id!", "customer_email": "user@example.com", "message": "hi"}, "session_id"),
    ({"session_id": "s1", "customer_email": "user@example.com"}, "message"),
    ({"session_id": "s1", "customer_email": "user@example.com", "message": "hi", "extra": 1}, "extra"),
])
def test_bad_input_gets_422_with_a_reason(mesh, body: dict, field: str) -> None:
    r = httpx.post(f"{mesh.gateway_url}/api/chat", json=body, timeout=10, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_bad_json_and_oversized_body(mesh) -> None:
    r = httpx.post(f"{mesh.gateway_url}/api/chat", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]
    r = httpx.post(f"{mesh.gateway_url}/api/chat", content=b"x" * 100_000, timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger" in r.json()["detail"]


def chunks(body: bytes, size: int = 8192) -> Iterator[bytes]:
    """A body sent with Transfer-Encoding: chunked (no Content-Length for the gateway to check first)."""
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_chunked_body_is_limited_while_it_is_read(mesh) -> None:
    big = json.dumps({"session_id": "s1", "customer_email": "user@example.com", "message": "x" * 100_000}).encode()
    r = httpx.post(f"{mesh.gateway_url}/api/chat", content=chunks(big), timeout=10,
                   headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413 and "larger" in r.json()["detail"]
    # A chunked body under the limit is read as usual.
    small = json.dumps({"session_id": uuid.uuid4().hex, "message": "hi " * 10}).encode()
    r = httpx.post(f"{mesh.gateway_url}/api/chat", content=chunks(small, 16), timeout=30,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code in (200, 202), r.text


def test_respond_async_answers_202_at_once_then_the_outcome(mesh) -> None:
    body = {"session_id": uuid.uuid4().hex, "customer_email": "user@example.com", "message": "Where is my order 12345?"}
    r = httpx.post(f"{mesh.gateway_url}/api/chat", json=body, headers={**AUTH, "Prefer": "respond-async"}, timeout=30)
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async", r.text
    outcome = follow(mesh.gateway_url, r.json()["message_id"])
    assert outcome.status_code == 200 and outcome.json()["status"] == "resolved"




def test_saga_events_stream_live_until_the_final_status(mesh) -> None:
    faults = {"GET /customers/{email}": {"latency_ms": 3000}}  # the context step takes 3 s
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    session = uuid.uuid4().hex
    sender = threading.Thread(target=chat, args=(mesh.gateway_url, "My order 12345 is late!"),
                              kwargs={"session": session})
    sender.start()
    try:
        # The gateway names the message in the session state before publishing it.
        r = redis.Redis.from_url(redis_url(mesh.endpoints), decode_responses=True)
        deadline = time.monotonic() + 20
        message_id = None
        while message_id is None and time.monotonic() < deadline:
            raw = r.get(f"session:{session}:state")
            message_id = json.loads(raw)["last_message_id"] if raw else None
            time.sleep(0.05)
        assert message_id, "the gateway never recorded the message"
        assert httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10, headers=AUTH).status_code == 202
        subscribed_at = time.time()
        events = read_events(mesh.gateway_url, message_id)
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()
        sender.join(timeout=30)

    saga_events = [e for k, e, _ in events if k == "saga"]
    kinds = [e["kind"] for e in saga_events]
    assert kinds[0] == "saga_started" and kinds[-1] == "saga_completed", kinds
    # Events written after the subscription arrived on the open stream (live, not history).
    live = [e for e in saga_events if e["ts"] > subscribed_at]
    assert {"saga_completed"} <= {e["kind"] for e in live}
    assert any(e["kind"] == "step_completed" and e["actor"] == "context_retriever" for e in live), kinds
    completed = [e["step_index"] for e in saga_events if e["kind"] == "step_completed"]
    assert completed == sorted(completed) and len(completed) == 7
    # The stream ends on the final status, the result last.
    assert events[-1][0] == "result" and events[-1][1]["message_id"] == message_id
    assert events[-1][1]["status"] == "resolved"


def sse_kinds(events: list[tuple[str, dict, float]]) -> list[tuple[str, str, str]]:
    """(event, saga kind or result status, actor) of each server-sent event, for compact assertions."""
    return [(k, e["kind"], e["actor"]) if k == "saga" else (k, e["status"], "") for k, e, _ in events]


def test_failed_saga_streams_the_aggregators_answer_then_closes(mesh) -> None:
    # The escalation router (the error handler) cannot open its ticket: its step fails for good, so the saga
    # fails, and its answer is delivered by the response aggregator a moment after saga_failed.
    faults = {"POST /tickets": {"error_rate": 1.0}}
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    try:
        body = {"session_id": uuid.uuid4().hex, "customer_email": "user@example.com",
                "message": "This is fraud, I will call my lawyer"}
        r = httpx.post(f"{mesh.gateway_url}/api/chat", json=body, headers={**AUTH, "Prefer": "respond-async"},
                       timeout=30)
        assert r.status_code == 202, r.text
        message_id = r.json()["message_id"]
        events = read_events(mesh.gateway_url, message_id)
        closed_at = time.time()
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()

    seen = sse_kinds(events)
    saga_events = [e for k, e, _ in events if k == "saga"]
    assert seen[0] == ("saga", "saga_started", "gateway"), seen
    # In write order, each once; the failure, the detour to the aggregator, its step, the final status.
    revisions = [e["revision"] for e in saga_events]
    assert revisions == sorted(set(revisions)), seen
    failed = seen.index(("saga", "saga_failed", "escalation_router"))
    detour = next(i for i, (k, e, _) in enumerate(events)
                  if k == "saga" and e["kind"] == "route_changed" and e["data"].get("reason") == "saga_failed")
    answered = seen.index(("saga", "step_completed", "response_aggregator"))
    assert failed < detour < answered < len(seen) - 2, seen
    assert seen[-2] == ("saga", "saga_completed", "response_aggregator") and saga_events[-1]["data"]["status"] == "failed"
    # The result last (the stream closed after it, long before its idle timeout), as GET /api/chat/{id} has it.
    kind, result, result_at = events[-1]
    assert kind == "result" and result["message_id"] == message_id and result["status"] == "escalated"
    assert result["response"]
    assert closed_at - result_at < 15
    outcome = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10, headers=AUTH).json()
    assert outcome["response"] == result["response"]
    assert saga_of(mesh.gateway_url, message_id)["state"]["status"] == "failed"


def test_supervisor_restarts_a_killed_actor(mesh) -> None:
    import os
    import signal

    before = mesh.endpoints["processes"]["decision_router-1"]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    after = before
    while time.monotonic() < deadline:
        after = mesh.endpoints["processes"]["decision_router-1"]
        if after["pid"] and after["pid"] != before["pid"]:
            break
        time.sleep(0.2)
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1
    r = chat(mesh.gateway_url, "Where is my order 12345?", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "resolved"


def test_chat_command(mesh, capsys) -> None:
    from supportmesh.chat import main

    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()  # 44444 not refunded yet
    assert main(["--gateway", mesh.gateway_url, "--token", mesh.token(), "I want a refund for order 44444"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[needs_confirmation]") and "Shall I go ahead" in out and "--session" in out
    assert main(["--gateway", mesh.gateway_url, "--token", mesh.token(), "--yes", "I want a refund for order 44444"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[resolved]") and "action: refund on order 44444" in out and "timeline" in out


# ---- the gateway in process, against a real nats-server and redis-server (no actors) ----------------------


CHAT = {"message": "Where is my order 12345?"}


async def stream_messages(harness) -> int:
    return (await harness.js.stream_info(harness.settings.stream_name)).state.messages


async def test_publish_failing_after_the_start_is_recorded_answers_202(gateway, harness) -> None:
    gw, client = gateway
    await harness.js.delete_stream(harness.settings.stream_name)  # JetStream refuses the first step
    gw.js.retry_s = 2.0  # how long a write is retried through an election: not the 20 s of a deployment

    r = await client.post("/api/chat", json={"session_id": "s-pub", **CHAT})

    # The saga exists (the sweeper will run it): the client gets its id rather than a 503 that it would
    # answer by sending the message again, which would start a second saga.
    assert r.status_code == 202, r.text
    message_id = r.json()["message_id"]
    assert (await gw.saga.state(message_id)).status == "running"
    assert [e.kind for e in await gw.saga.history(message_id)] == ["saga_started"]
    assert (await client.get(f"/api/chat/{message_id}")).status_code == 202
    assert gw.replies.waiting == 0


async def test_a_start_that_cannot_be_recorded_answers_503_and_publishes_nothing(gateway, harness) -> None:
    gw, client = gateway
    await harness.js.delete_key_value("saga_log")
    gw.js.retry_s = 2.0  # how long a write is retried through an election: not the 20 s of a deployment

    r = await client.post("/api/chat", json={"session_id": "s-rec", **CHAT})

    assert r.status_code == 503 and "not accepting" in r.json()["detail"]
    assert await stream_messages(harness) == 0  # nothing will run: sending it again is safe
    assert gw.replies.waiting == 0


async def test_reply_waiters_are_forgotten_on_deadline_and_on_cancel(gateway) -> None:
    gw, client = gateway
    r = await client.post("/api/chat", json={"session_id": "s-wait", **CHAT})  # no actors: past the deadline
    assert r.status_code == 202 and gw.replies.waiting == 0

    # The client goes away while its request waits: a deadline far away, so that the cancellation never races
    # the deadline (on a loaded machine the poll below can see the waiter just as a 1.5 s deadline fires, and
    # Python 3.11's wait_for then swallows the cancellation: the request ends as a 202, not cancelled).
    gw.settings.chat_deadline_s = 120.0
    request = asyncio.create_task(client.post("/api/chat", json={"session_id": "s-cancel", **CHAT}))
    deadline = time.monotonic() + 10
    while gw.replies.waiting == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert gw.replies.waiting == 1
    # The client goes away (again if a cancellation is swallowed: see cancel_until_done). The request must end,
    # and what matters is that its waiter is gone (a leaked waiter is what this test catches). Under load the
    # in-process ASGI stack can turn the cancellation into an early response instead of raising it: either
    # way the request is over.
    await cancel_until_done([request])
    with contextlib.suppress(asyncio.CancelledError):
        request.result()
    assert gw.replies.waiting == 0


async def test_chunked_body_over_the_limit_gets_413_in_process(gateway) -> None:
    _, client = gateway

    async def body():
        yield b'{"session_id": "s1", "customer_email": "user@example.com", "message": "'
        for _ in range(10):
            yield b"x" * 8192
        yield b'"}'

    r = await client.post("/api/chat", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than 65536" in r.json()["detail"]


async def sse_in_process(client: httpx.AsyncClient, message_id: str) -> list[tuple[str, dict]]:
    """Every server-sent event of a saga from the in-process gateway (the ASGI transport hands the body over
    once the stream has closed, so a stream that never closes fails here)."""
    r = await asyncio.wait_for(client.get(f"/api/chat/{message_id}/events"), timeout=40)
    assert r.status_code == 200, r.text
    events, kind = [], None
    for line in r.text.splitlines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            events.append((kind, json.loads(line.split(":", 1)[1])))
    return events


async def test_stream_of_a_failed_saga_answered_directly_ends_with_its_answer(gateway, harness) -> None:
    """The error handler fails for good, then the aggregator cannot deliver the answer either: the runtime
    stores the answer itself after the last saga_failed, with no event after it. The stream still ends with
    the result (not at the first saga_failed, and not at its idle timeout)."""
    from tests.support.toy_actors import BrokenAggregator, Flaky

    _, client = gateway
    await harness.run_actor(Flaky)
    await harness.run_actor(BrokenAggregator)
    message = await harness.submit(["flaky"], "fail-permanent", error_handler="flaky")

    events = await sse_in_process(client, message.message_id)

    seen = [(k, e["kind"], e["actor"]) if k == "saga" else (k, e["status"], "") for k, e in events]
    assert seen[0] == ("saga", "saga_started", "gateway"), seen
    assert [s for s in seen if s[1] == "saga_failed"] == [("saga", "saga_failed", "flaky"),
                                                          ("saga", "saga_failed", "response_aggregator")], seen
    assert ("saga", "step_failed", "response_aggregator") in seen
    assert "saga_completed" not in [s[1] for s in seen]
    assert seen[-1] == ("result", "escalated", "") and events[-1][1]["message_id"] == message.message_id
    revisions = [e["revision"] for k, e in events if k == "saga"]
    assert revisions == sorted(set(revisions)), seen
