"""Sagas that wait for a person, on the whole mesh (real nats-server, Redis, mock APIs, every actor, two gateways):
the customer's yes before any side effect, a colleague's approval in the console, their timeouts, and waits that
outlive a kill -9 of the execution coordinator or of nats-server.

Every check that an action happened (or did not) reads the orders API's own record of the saga's effects."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import httpx
import pytest

from gateway.auth import mint_agent_token
from tests.support.chat_client import PROVISIONAL, chat, follow_final, reply
from tests.support.identity import auth
from tests.support.mesh import Mesh
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

JOHN = "user@example.com"  # premium; order 44444 delivered (refundable)
JANE = "jane.smith@example.com"  # standard ($100 a refund without a colleague); order 67890 delivered, $249


def effects(mesh: Mesh, order_id: str, message_id: str) -> list[dict]:
    """The orders API's actions on `order_id` made by the saga `message_id`."""
    r = httpx.get(f"{mesh.mocks_url}/orders/{order_id}/actions", timeout=10)
    r.raise_for_status()
    return [a for a in r.json()["actions"] if a["idempotency_key"].startswith(f"{message_id}:")]


def agent(mesh: Mesh, name: str = "Alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_agent_token(mesh.auth_secret, name, 3600)}"}


def ask(mesh: Mesh, text: str, email: str = JOHN, session: str | None = None) -> dict[str, Any]:
    """The answer to `text` without confirming anything (a question stays a question)."""
    r = chat(mesh.gateway_url, text, email=email, session=session or uuid.uuid4().hex, confirm=False)
    assert r.status_code == 200, r.text
    return r.json()


def kinds(mesh: Mesh, message_id: str, email: str = JOHN) -> list[str]:
    r = httpx.get(f"{mesh.gateway_url}/api/sagas/{message_id}", headers=auth(email), timeout=10)
    r.raise_for_status()
    return [e["kind"] for e in r.json()["events"]]


def waiting(mesh: Mesh, saga: dict[str, Any], email: str = JOHN) -> None:
    """Until the saga's wait is recorded (its question was answered one step before it)."""
    wait_for(lambda: "wait_started" in kinds(mesh, saga["message_id"], email), what="the wait")


def approval_item(mesh: Mesh, message_id: str) -> dict | None:
    r = httpx.get(f"{mesh.gateway_url}/api/console/queue", headers=agent(mesh), timeout=10)
    r.raise_for_status()
    return next((i for i in r.json()["items"] if i["kind"] == "approval" and i["message_id"] == message_id), None)


@pytest.fixture
def fresh(mesh: Mesh) -> Mesh:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    return mesh


def test_a_refund_waits_for_the_customers_yes_then_happens_once(fresh: Mesh) -> None:
    session = uuid.uuid4().hex
    asked = ask(fresh, "Please refund $10 for order 44444", session=session)
    assert asked["status"] == "needs_confirmation", asked
    assert asked["pending_action"] == {"action": "refund", "order_id": "44444", "amount": 10.0}
    assert "$10.00" in asked["response"] and "yes" in asked["response"]
    waiting(fresh, asked)
    assert effects(fresh, "44444", asked["message_id"]) == []  # nothing before the yes

    done = reply(fresh.gateway_url, "Yes please", session=session).json()
    assert done["message_id"] == asked["message_id"] and done["status"] == "resolved", done
    assert "refund" in done["response"] and done["execution_result"]["actions"], done
    assert len(effects(fresh, "44444", asked["message_id"])) == 1
    assert {"wait_started", "signal_received", "action_executed", "saga_completed"} <= set(
        kinds(fresh, asked["message_id"]))

    # A second yes finds nothing waiting: a new message, and still one refund.
    again = chat(fresh.gateway_url, "yes", session=session).json()
    assert again["message_id"] != asked["message_id"]
    assert len(effects(fresh, "44444", asked["message_id"])) == 1
    rows = httpx.get(f"{fresh.gateway_url}/api/sessions/{session}/history", headers=auth(JOHN), timeout=10).json()
    texts = [(m["sender"], m["content"]) for m in rows["messages"]]
    assert texts[:4] == [("customer", "Please refund $10 for order 44444"), ("agent", asked["response"]),
                         ("customer", "Yes please"), ("agent", done["response"])]


def test_no_executes_nothing_and_says_so(fresh: Mesh) -> None:
    session = uuid.uuid4().hex
    asked = ask(fresh, "Please refund $10 for order 44444", session=session)
    assert asked["status"] == "needs_confirmation"
    done = reply(fresh.gateway_url, "no thanks", session=session).json()
    assert done["message_id"] == asked["message_id"] and done["status"] == "resolved"
    assert "not carried out" in done["response"] and not done["execution_result"]["actions"]
    assert effects(fresh, "44444", asked["message_id"]) == []


def test_another_question_lapses_the_pending_action(fresh: Mesh) -> None:
    session = uuid.uuid4().hex
    asked = ask(fresh, "Please refund $10 for order 44444", session=session)
    other = chat(fresh.gateway_url, "Where is my order 12345?", session=session).json()
    assert other["message_id"] != asked["message_id"] and "Distribution Center" in other["response"]
    lapsed = follow_final(fresh.gateway_url, asked["message_id"]).json()
    assert lapsed["status"] == "resolved" and "not carried out" in lapsed["response"], lapsed
    assert effects(fresh, "44444", asked["message_id"]) == []


def test_an_approval_posted_twice_through_two_gateways_acts_once(fresh: Mesh) -> None:
    asked = ask(fresh, "Please refund order 67890", email=JANE)
    assert asked["status"] == "pending_approval", asked
    assert asked["pending_action"]["order_id"] == "67890" and "colleague" in asked["response"]
    item = wait_for(lambda: approval_item(fresh, asked["message_id"]), what="the approval in the queue")
    assert item["proposed_action"]["action"] == "refund" and item["customer_email"] == JANE

    urls = fresh.endpoints["gateway_urls"]
    assert len(urls) == 2

    async def approve_twice() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [client.post(f"{url}/api/console/sagas/{asked['message_id']}/approve", headers=agent(fresh))
                     for url in urls]
            return sorted(r.status_code for r in await asyncio.gather(*calls))

    assert asyncio.run(approve_twice()) == [200, 409]
    done = follow_final(fresh.gateway_url, asked["message_id"], email=JANE).json()
    assert done["status"] == "resolved" and "approved" in done["response"], done
    assert len(effects(fresh, "67890", asked["message_id"])) == 1
    assert approval_item(fresh, asked["message_id"]) is None
    # Decided: a late decision is refused.
    late = httpx.post(f"{fresh.gateway_url}/api/console/sagas/{asked['message_id']}/deny", json={"note": "x"},
                      headers=agent(fresh), timeout=10)
    assert late.status_code == 409


def test_a_denial_tells_the_customer_why(fresh: Mesh) -> None:
    asked = ask(fresh, "Please refund order 67890", email=JANE)
    wait_for(lambda: approval_item(fresh, asked["message_id"]), what="the approval in the queue")
    r = httpx.post(f"{fresh.gateway_url}/api/console/sagas/{asked['message_id']}/deny",
                   json={"note": "The watch was returned damaged."}, headers=agent(fresh), timeout=10)
    assert r.status_code == 200, r.text
    done = follow_final(fresh.gateway_url, asked["message_id"], email=JANE).json()
    assert done["status"] == "resolved" and "The watch was returned damaged." in done["response"], done
    assert effects(fresh, "67890", asked["message_id"]) == []


# ---- timeouts and kills: meshes of their own (kills, and deadlines short or long) ----------------------------

@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Any:
    """Deadlines of 6 s: the timers are what these tests are about."""
    m = Mesh(tmp_path_factory.mktemp("waits-quick"), env={
        "SUPPORTMESH_CHAT_DEADLINE_S": "3", "SUPPORTMESH_CONFIRMATION_TIMEOUT_S": "6",
        "SUPPORTMESH_APPROVAL_TIMEOUT_S": "6"}).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def patient_mesh(tmp_path_factory) -> Any:
    m = Mesh(tmp_path_factory.mktemp("waits-patient"), env={"SUPPORTMESH_CHAT_DEADLINE_S": "3"}).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def patient(patient_mesh: Mesh) -> Mesh:
    """The default deadlines (minutes, hours): a wait outlives any kill and restart however slow the machine;
    the seed orders as new (an earlier test's refund would change what the policy allows)."""
    httpx.post(f"{patient_mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    return patient_mesh


def test_an_unanswered_confirmation_lapses_on_time_with_no_action(quick: Mesh) -> None:
    asked = ask(quick, "Please refund $10 for order 44444")
    started = time.monotonic()
    done = follow_final(quick.gateway_url, asked["message_id"]).json()
    assert done["status"] == "resolved" and "didn't hear back" in done["response"], done
    assert time.monotonic() - started >= 3  # not before its deadline (6 s after the wait started)
    assert "timer_fired" in kinds(quick, asked["message_id"])
    assert effects(quick, "44444", asked["message_id"]) == []


def test_an_approval_nobody_gives_is_escalated_with_no_action(quick: Mesh) -> None:
    asked = ask(quick, "Please refund order 67890", email=JANE)
    assert asked["status"] == "pending_approval"
    done = follow_final(quick.gateway_url, asked["message_id"], email=JANE).json()
    assert done["status"] == "escalated", done
    assert effects(quick, "67890", asked["message_id"]) == []


def _kill(mesh: Mesh, name: str) -> int:
    pid = mesh.pids()[name]
    os.kill(pid, signal.SIGKILL)
    return pid


def _ready_again(mesh: Mesh, name: str, old_pid: int) -> None:
    wait_for(lambda: mesh.pids().get(name) not in (None, old_pid), 90, f"{name} restarted")
    wait_for(lambda: httpx.get(f"{mesh.gateway_url}/readyz", timeout=5).status_code == 200, 90, "gateway ready")


def _decide_when_back(mesh: Mesh, message_id: str, verb: str, body: dict | None = None) -> httpx.Response:
    """An agent's decision, sent again while the gateway still answers 5xx (reconnecting after a restart)."""
    def decide() -> httpx.Response | None:
        r = httpx.post(f"{mesh.gateway_url}/api/console/sagas/{message_id}/{verb}", json=body,
                       headers=agent(mesh), timeout=10)
        return None if r.status_code >= 500 else r
    return wait_for(decide, 60, f"an answer to the {verb}")


def test_a_yes_after_the_waiting_coordinator_was_killed_acts_once(patient: Mesh) -> None:
    session = uuid.uuid4().hex
    asked = ask(patient, "Please refund $10 for order 44444", session=session)
    waiting(patient, asked)
    _ready_again(patient, "execution_coordinator-1", _kill(patient, "execution_coordinator-1"))
    done = reply(patient.gateway_url, "yes", session=session).json()
    assert done["message_id"] == asked["message_id"] and done["status"] == "resolved", done
    assert len(effects(patient, "44444", asked["message_id"])) == 1


def test_an_approval_outlives_a_nats_server_kill(patient: Mesh) -> None:
    approved = ask(patient, "Please refund order 67890", email=JANE)
    waiting(patient, approved, JANE)
    _ready_again(patient, "nats-server", _kill(patient, "nats-server"))
    r = _decide_when_back(patient, approved["message_id"], "approve")
    assert r.status_code == 200, r.text
    done = follow_final(patient.gateway_url, approved["message_id"], email=JANE).json()
    assert done["status"] == "resolved" and len(effects(patient, "67890", approved["message_id"])) == 1


def test_a_durable_timer_outlives_a_nats_server_kill(quick: Mesh) -> None:
    """Killed while the saga waits: the schedule survived in the store, and the timer still ends the wait."""
    unanswered = ask(quick, "Please refund $10 for order 44444")
    waiting(quick, unanswered)
    _ready_again(quick, "nats-server", _kill(quick, "nats-server"))
    lapsed = follow_final(quick.gateway_url, unanswered["message_id"]).json()
    assert lapsed["status"] not in PROVISIONAL and "didn't hear back" in lapsed["response"], lapsed
    assert "timer_fired" in kinds(quick, unanswered["message_id"])
    assert effects(quick, "44444", unanswered["message_id"]) == []


def test_a_no_after_the_waiting_coordinator_was_killed_does_nothing(patient: Mesh) -> None:
    session = uuid.uuid4().hex
    asked = ask(patient, "Please refund $10 for order 44444", session=session)
    waiting(patient, asked)
    _ready_again(patient, "execution_coordinator-1", _kill(patient, "execution_coordinator-1"))
    done = reply(patient.gateway_url, "no", session=session).json()
    assert done["message_id"] == asked["message_id"] and "not carried out" in done["response"], done
    assert effects(patient, "44444", asked["message_id"]) == []


def test_a_denial_after_a_nats_server_kill_tells_the_customer(patient: Mesh) -> None:
    asked = ask(patient, "Please refund order 67890", email=JANE)
    waiting(patient, asked, JANE)
    _ready_again(patient, "nats-server", _kill(patient, "nats-server"))
    assert _decide_when_back(patient, asked["message_id"], "deny", {"note": "Out of policy."}).status_code == 200
    done = follow_final(patient.gateway_url, asked["message_id"], email=JANE).json()
    assert done["status"] == "resolved" and "Out of policy." in done["response"], done
    assert effects(patient, "67890", asked["message_id"]) == []


def test_an_approval_timeout_outlives_a_coordinator_kill(quick: Mesh) -> None:
    asked = ask(quick, "Please refund order 67890", email=JANE)
    waiting(quick, asked, JANE)
    _ready_again(quick, "execution_coordinator-1", _kill(quick, "execution_coordinator-1"))
    done = follow_final(quick.gateway_url, asked["message_id"], email=JANE).json()
    assert done["status"] == "escalated", done  # the timer fired in the new process: a ticket, no action
    assert "timer_fired" in kinds(quick, asked["message_id"], JANE)
    assert effects(quick, "67890", asked["message_id"]) == []
