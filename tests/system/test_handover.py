"""Human hand-over on the whole mesh: the console's API is for agents only, an escalated session's next messages
go to the support team's queue (no saga), an agent's reply reaches the session's history and its live event
stream, and closing the hand-over gives the session back to the bot."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from gateway.auth import mint_agent_token
from tests.support.chat_client import answer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EMAIL = "jane.smith@example.com"
WAIT_S = 60.0  # generous: machines differ


def agent_headers(mesh: Any, name: str = "Alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_agent_token(mesh.auth_secret, name, 3600)}"}


class SessionEvents:
    """A session's server-sent events read in a thread (`GET /api/sessions/{id}/events`)."""

    def __init__(self, base: str, session_id: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[str, dict]] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(base, session_id, headers), daemon=True)
        self._thread.start()

    def _read(self, base: str, session_id: str, headers: dict[str, str]) -> None:
        try:
            self._stream(base, session_id, headers)
        except httpx.HTTPError:
            return  # the mesh stopped, or the test is over

    def _stream(self, base: str, session_id: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", f"{base}/api/sessions/{session_id}/events", headers=headers,
                          timeout=httpx.Timeout(10, read=60)) as r:
            self.status = r.status_code
            kind = "message"
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    self.events.append((kind, json.loads(line.split(":", 1)[1])))

    def of(self, kind: str) -> list[dict]:
        return [data for k, data in self.events if k == kind]

    def stop(self) -> None:
        self._stop.set()


def queue_item(mesh: Any, session_id: str) -> dict | None:
    r = httpx.get(f"{mesh.gateway_url}/api/console/queue", headers=agent_headers(mesh), timeout=10)
    assert r.status_code == 200, r.text
    return next((i for i in r.json()["items"] if i["session_id"] == session_id), None)


def test_the_console_api_is_for_agents_only(mesh) -> None:
    base = mesh.gateway_url
    routes = [("GET", "/api/console/queue", None), ("GET", "/api/console/sessions/s1", None),
              ("GET", "/api/console/sagas/m1", None),
              ("POST", "/api/console/sagas/m1/approve", None), ("POST", "/api/console/sagas/m1/deny", {"note": "no"}),
              ("POST", "/api/console/sessions/s1/reply", {"text": "hi"}), ("POST", "/api/console/sessions/s1/close", None)]
    for method, path, body in routes:
        assert httpx.request(method, base + path, json=body, timeout=10).status_code == 401, path
        bad = httpx.request(method, base + path, json=body, timeout=10, headers={"Authorization": "Bearer forged"})
        assert bad.status_code == 401, path
        assert httpx.request(method, base + path, json=body, timeout=10, headers=mesh.auth()).status_code == 403, path
    agent = agent_headers(mesh)
    queue = httpx.get(f"{base}/api/console/queue", headers=agent, timeout=10)
    assert queue.status_code == 200 and isinstance(queue.json()["items"], list)
    for verb, body in (("approve", None), ("deny", {"note": "not this time"})):
        r = httpx.post(f"{base}/api/console/sagas/m1/{verb}", json=body, headers=agent, timeout=10)
        assert r.status_code == 409 and r.json()["detail"] == "no saga waiting for a decision"
    # Nothing to reply to or close: 409; a session not in the queue cannot be read.
    assert httpx.post(f"{base}/api/console/sessions/s1/reply", json={"text": "x"}, headers=agent,
                      timeout=10).status_code == 409
    assert httpx.post(f"{base}/api/console/sessions/s1/close", headers=agent, timeout=10).status_code == 409
    assert httpx.get(f"{base}/api/console/sessions/s1", headers=agent, timeout=10).status_code == 404
    # An agent's token is no customer's: refused on the customers' routes.
    assert httpx.post(f"{base}/api/chat", json={"session_id": "s1", "message": "hi"}, headers=agent,
                      timeout=10).status_code == 403
    assert httpx.post(f"{base}/api/sessions", headers=agent, timeout=10).status_code == 403
    assert httpx.get(f"{base}/api/sessions/s1/history", headers=agent, timeout=10).status_code == 403


def test_hand_over_both_ways_then_back_to_the_bot(mesh) -> None:
    base, customer, agent = mesh.gateway_url, mesh.auth(EMAIL), agent_headers(mesh, "Alice")
    session = httpx.post(f"{base}/api/sessions", headers=customer, timeout=10).json()["session_id"]
    escalated = answer(base, "I want to talk to a human", session=session, email=EMAIL)
    assert escalated["status"] == "escalated"
    item = wait_for(lambda: queue_item(mesh, session), WAIT_S, "the hand-over in the queue")
    assert item["kind"] == "handover" and item["message_id"] == escalated["message_id"]
    assert item["ticket_id"] and item["reason"] == "customer_asked" and item["verified"]
    assert item["customer_email"] == EMAIL

    events = SessionEvents(base, session, customer)
    try:
        wait_for(lambda: events.of("open"), WAIT_S, "the session stream open")
        # The customer's next message goes to the queue: no saga.
        hostile = "<img src=x onerror=alert(1)> are you there?"
        r = httpx.post(f"{base}/api/chat", json={"session_id": session, "message": hostile}, headers=customer,
                       timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "with_agent", r.text
        queued_id = r.json()["message_id"]
        assert httpx.get(f"{base}/api/sagas/{queued_id}", headers=customer, timeout=10).status_code == 404
        item = queue_item(mesh, session)
        assert item["customer_messages"] == 1 and item["last_customer_message"] == hostile
        detail = httpx.get(f"{base}/api/console/sessions/{session}", headers=agent, timeout=10).json()
        assert [m["content"] for m in detail["messages"]][-1] == hostile
        timeline = httpx.get(f"{base}/api/console/sagas/{escalated['message_id']}", headers=agent, timeout=10)
        assert timeline.status_code == 200 and any(e["kind"] == "escalated" for e in timeline.json()["events"])

        # The agent answers: in the history and live on the session's stream.
        sent = httpx.post(f"{base}/api/console/sessions/{session}/reply", json={"text": "Hello Jane, Alice here."},
                          headers=agent, timeout=10)
        assert sent.status_code == 200, sent.text
        reply = wait_for(lambda: events.of("agent_reply"), WAIT_S, "the agent's reply on the stream")[0]
        assert reply["text"] == "Hello Jane, Alice here." and reply["agent"] == "Alice"
        history = httpx.get(f"{base}/api/sessions/{session}/history", headers=customer, timeout=10).json()
        last = history["messages"][-1]
        assert (last["sender"], last["content"], last["agent"]) == ("agent", "Hello Jane, Alice here.", "Alice")

        # Closing gives the session back to the bot.
        assert httpx.post(f"{base}/api/console/sessions/{session}/close", headers=agent, timeout=10).status_code == 200
        wait_for(lambda: events.of("handover_closed"), WAIT_S, "the close on the stream")
        assert queue_item(mesh, session) is None
    finally:
        events.stop()
    back = answer(base, "Where is my order 67890?", session=session, email=EMAIL)
    assert back["status"] == "resolved" and "67890" in back["response"]


def test_someone_elses_session_stream_is_not_found(mesh) -> None:
    session = httpx.post(f"{mesh.gateway_url}/api/sessions", headers=mesh.auth(EMAIL), timeout=10).json()["session_id"]
    r = httpx.get(f"{mesh.gateway_url}/api/sessions/{session}/events", headers=mesh.auth(), timeout=10)
    assert r.status_code == 404
