"""End to end over HTTP against the whole local mesh (`supportmesh up`): the specification's flows, history,
session state, the saga API, server-sent events, the 202 path, follow-ups and two gateway processes."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import redis

pytestmark = pytest.mark.e2e


def chat(base: str, message: str, *, session: str | None = None, email: str = "user@example.com",
         timeout: float = 30) -> httpx.Response:
    body = {"session_id": session or uuid.uuid4().hex, "customer_email": email, "message": message}
    return httpx.post(f"{base}/api/chat", json=body, timeout=timeout)


def saga_of(base: str, message_id: str) -> dict:
    r = httpx.get(f"{base}/api/sagas/{message_id}", timeout=10)
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

    history = httpx.get(f"{mesh.gateway_url}/api/sessions/{session}/history", timeout=10).json()["messages"]
    assert [(m["sender"], m["message_id"].split(":")[0]) for m in history] == [
        ("customer", first["message_id"]), ("agent", first["message_id"]),
        ("customer", second["message_id"]), ("agent", second["message_id"])]
    assert history[1]["content"] == first["response"]

    r = redis.Redis.from_url(mesh.endpoints["redis_url"], decode_responses=True)
    state = json.loads(r.get(f"session:{session}:state"))
    assert state["last_message_id"] == second["message_id"] and state["status"] == "escalated"
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

    events = []
    with httpx.stream("GET", f"{mesh.gateway_url}/api/chat/{body['message_id']}/events", timeout=20) as r:
        assert r.status_code == 200
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    assert events[0][0] == "saga" and events[0][1]["kind"] == "saga_started"
    assert events[-1][0] == "result" and events[-1][1]["message_id"] == body["message_id"]
    saga_events = [e for k, e in events if k == "saga"]
    assert [e["kind"] for e in saga_events][-1] == "saga_completed"
    steps = [e["step_index"] for e in saga_events if e["kind"] == "step_completed"]
    assert steps == sorted(steps)


def test_slow_saga_answers_202_then_the_outcome(mesh) -> None:
    faults = {"GET /customers/{email}": {"latency_ms": 3500}}
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    try:
        r = chat(mesh.gateway_url, "My order 12345 is late!", timeout=30)
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()

    assert r.status_code == 202, r.text
    message_id = r.json()["message_id"]
    assert r.json()["status"] == "processing"
    deadline = time.monotonic() + 30
    outcome = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10)
    while outcome.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.3)
        outcome = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10)
    assert outcome.status_code == 200 and outcome.json()["status"] == "resolved"


def test_replies_reach_the_right_gateway_instance(mesh) -> None:
    urls = mesh.endpoints["gateway_urls"]
    assert len(urls) == 2
    for url in urls:
        r = chat(url, "Where is my order 12345?")
        assert r.status_code == 200 and r.json()["status"] == "resolved", r.text


def test_health_readiness_metrics_docs(mesh) -> None:
    base = mesh.gateway_url
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["status"] == "ready" and set(ready["checks"]) == {"nats", "stream", "redis", "sqlite"}
    assert "supportmesh_chat_latency_seconds" in httpx.get(f"{base}/metrics").text
    assert httpx.get(f"{base}/openapi.json").json()["paths"]["/api/chat"]
    assert httpx.get(f"{base}/docs").status_code == 200
    assert httpx.get(f"{base}/api/chat/{'f' * 32}").status_code == 404


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
    r = httpx.post(f"{mesh.gateway_url}/api/chat", json=body, timeout=10)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_bad_json_and_oversized_body(mesh) -> None:
    r = httpx.post(f"{mesh.gateway_url}/api/chat", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]
    r = httpx.post(f"{mesh.gateway_url}/api/chat", content=b"x" * 100_000, timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger" in r.json()["detail"]


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
    assert r.status_code in (200, 202)
    message_id = r.json()["message_id"]
    while r.status_code == 202 and time.monotonic() < deadline + 30:
        time.sleep(0.3)
        r = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "resolved"


def test_chat_command(mesh, capsys) -> None:
    from supportmesh.chat import main

    assert main(["--gateway", mesh.gateway_url, "I want a refund for order 44444"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[resolved]") and "action: refund on order 44444" in out and "timeline" in out
