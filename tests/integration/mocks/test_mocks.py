"""The mock commerce APIs: seed data, idempotent actions, undo, tickets, fault injection, and the real server."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import date

import httpx
import pytest

from mocks.app import create_app
from mocks.faults import Faults
from supportmesh.natsserver import free_port



@pytest.fixture
async def api():
    app = create_app(Faults({}, seed=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mocks") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


async def test_specification_records_are_seeded(api: httpx.AsyncClient) -> None:
    customer = (await api.get("/customers/user@example.com")).json()
    assert (customer["id"], customer["name"], customer["tier"]) == ("cust_001", "John Doe", "premium")
    order = (await api.get("/orders/12345")).json()
    assert order["status"] == "shipped" and order["tracking_id"] == "1Z999AA10123456784"
    assert order["expected_delivery"] < date.today().isoformat()  # it is late, relative to today
    tracking = (await api.get("/tracking/1Z999AA10123456784")).json()
    assert tracking["status"] == "in_transit" and tracking["location"] == "Distribution Center"
    orders = (await api.get("/customers/user@example.com/orders")).json()["orders"]
    assert {"12345", "55555", "44444", "33333"} <= {o["order_id"] for o in orders}


async def test_realistic_data_set(api: httpx.AsyncClient) -> None:
    store = api.app.state.store  # type: ignore[attr-defined]
    assert len(store.customers) >= 20 and len(store.orders) >= 60
    assert {c["tier"] for c in store.customers.values()} == {"standard", "premium", "vip"}
    assert {o["status"] for o in store.orders.values()} >= {
        "processing", "shipped", "delayed", "delivered", "lost", "returned", "cancelled"}


@pytest.mark.parametrize("path", ["/customers/nobody@example.com", "/orders/00000", "/tracking/1Z0000000000000000"])
async def test_unknown_records_are_404_with_a_reason(api: httpx.AsyncClient, path: str) -> None:
    r = await api.get(path)
    assert r.status_code == 404 and r.json()["detail"]


async def test_actions_are_idempotent(api: httpx.AsyncClient) -> None:
    body = {"amount": 10, "reason": "late"}
    first = await api.post("/orders/44444/refunds", json=body, headers={"Idempotency-Key": "k-1"})
    again = await api.post("/orders/44444/refunds", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    actions = (await api.get("/orders/44444/actions")).json()["actions"]
    assert len(actions) == 1 and actions[0]["idempotency_key"] == "k-1" and actions[0]["status"] == "active"
    assert (await api.get("/orders/44444")).json()["refundable_amount"] == 19.0
    conflict = await api.post("/orders/44444/refunds", json={"amount": 5}, headers={"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409
    missing = await api.post("/orders/44444/refunds", json=body)
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["detail"]


async def test_business_rules(api: httpx.AsyncClient) -> None:
    too_much = await api.post("/orders/44444/refunds", json={"amount": 1000}, headers={"Idempotency-Key": "a"})
    assert too_much.status_code == 409 and "exceeds" in too_much.json()["detail"]
    shipped = await api.post("/orders/12345/cancellation", json={}, headers={"Idempotency-Key": "b"})
    assert shipped.status_code == 409 and "processing" in shipped.json()["detail"]
    negative = await api.post("/orders/44444/refunds", json={"amount": -1}, headers={"Idempotency-Key": "c"})
    assert negative.status_code == 422
    cancel = await api.post("/orders/55555/cancellation", json={"reason": "changed my mind"},
                            headers={"Idempotency-Key": "d"})
    assert cancel.status_code == 201
    assert (await api.get("/orders/55555")).json()["status"] == "cancelled"


async def test_undo_restores_state_once(api: httpx.AsyncClient) -> None:
    cancel = (await api.post("/orders/55555/cancellation", json={}, headers={"Idempotency-Key": "u"})).json()
    first = await api.post(f"/actions/{cancel['action_id']}/undo")
    second = await api.post(f"/actions/{cancel['action_id']}/undo")
    assert first.status_code == second.status_code == 200 and second.json()["status"] == "undone"
    order = (await api.get("/orders/55555")).json()
    assert order["status"] == "processing" and order["refundable_amount"] == order["total"]
    assert (await api.post("/actions/nope/undo")).status_code == 404


async def test_undoing_an_older_refund_keeps_a_newer_one(api: httpx.AsyncClient) -> None:
    before = (await api.get("/orders/12345")).json()["refundable_amount"]
    first = (await api.post("/orders/12345/refunds", json={"amount": 10}, headers={"Idempotency-Key": "r1"})).json()
    await api.post("/orders/12345/refunds", json={"amount": 5}, headers={"Idempotency-Key": "r2"})
    await api.post(f"/actions/{first['action_id']}/undo")
    await api.post(f"/actions/{first['action_id']}/undo")  # a second undo changes nothing
    after = (await api.get("/orders/12345")).json()["refundable_amount"]
    assert after == pytest.approx(before - 5)
    statuses = {a["idempotency_key"]: a["status"] for a in (await api.get("/orders/12345/actions")).json()["actions"]}
    assert statuses == {"r1": "undone", "r2": "active"}


async def test_tickets_are_idempotent(api: httpx.AsyncClient) -> None:
    body = {"message_id": "m1", "customer_email": "user@example.com", "reason": "critical_sentiment"}
    a = await api.post("/tickets", json=body, headers={"Idempotency-Key": "m1:ticket"})
    b = await api.post("/tickets", json=body, headers={"Idempotency-Key": "m1:ticket"})
    assert a.status_code == 201 and b.status_code == 200 and a.json()["ticket_id"] == b.json()["ticket_id"]
    assert len((await api.get("/tickets", params={"message_id": "m1"})).json()["tickets"]) == 1


async def test_fault_injection_fails_before_the_effect(api: httpx.AsyncClient) -> None:
    faults = {"POST /orders/{order_id}/refunds": {"error_rate": 1.0}}
    assert (await api.put("/_admin/faults", json=faults)).status_code == 200
    r = await api.post("/orders/44444/refunds", json={"amount": 1}, headers={"Idempotency-Key": "f"})
    assert r.status_code == 503 and "injected" in r.json()["detail"]
    assert (await api.get("/orders/44444/actions")).json()["actions"] == []
    assert (await api.get("/orders/44444")).status_code == 200  # other routes unaffected
    await api.put("/_admin/faults", json={})
    r = await api.post("/orders/44444/refunds", json={"amount": 1}, headers={"Idempotency-Key": "f"})
    assert r.status_code == 201
    bad = await api.put("/_admin/faults", json={"default": {"error_rate": 7}})
    assert bad.status_code == 422


@pytest.mark.integration  # starts the mock APIs as a real server
def test_real_server_over_http(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mocks.server", "--port", str(port)],
                            stdout=open(tmp_path / "mocks.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.get(f"http://127.0.0.1:{port}/orders/12345", timeout=5)
        assert r.status_code == 200 and r.json()["order_id"] == "12345"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'supportmesh_mock_api_latency_seconds_count{method="GET",route="/orders/{order_id}"}' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=10)
