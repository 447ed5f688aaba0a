"""The mock APIs' fault modes that recovery is tested with: a failure *after* the effect (the client cannot tell
whether it happened), and "fail the first N requests" for deterministic retry tests."""

from __future__ import annotations

import httpx
import pytest

from mocks.app import create_app
from mocks.faults import Faults

REFUNDS = "POST /orders/{order_id}/refunds"


@pytest.fixture
async def api():
    app = create_app(Faults({}, seed=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mocks") as client:
        yield client


async def refund(api: httpx.AsyncClient, key: str = "k1") -> httpx.Response:
    return await api.post("/orders/44444/refunds", json={"amount": 5}, headers={"Idempotency-Key": key})


async def test_fail_after_effect_performs_the_action_and_answers_503(api: httpx.AsyncClient) -> None:
    assert (await api.put("/_admin/faults", json={REFUNDS: {"fail_after_effect_rate": 1.0}})).status_code == 200
    first, again = await refund(api), await refund(api)
    assert first.status_code == again.status_code == 503
    assert "after the effect" in first.json()["detail"]
    # The effect happened once (the retry with the same key replayed it), and the order shows it.
    actions = (await api.get("/orders/44444/actions")).json()["actions"]
    assert [(a["idempotency_key"], a["status"], a["amount"]) for a in actions] == [("k1", "active", 5.0)]
    assert (await api.get("/orders/44444")).json()["refundable_amount"] == 24.0
    await api.put("/_admin/faults", json={})
    replay = await refund(api)
    assert replay.status_code == 200 and replay.json()["action_id"] == actions[0]["action_id"]


async def test_fail_first_fails_exactly_n_requests_then_works(api: httpx.AsyncClient) -> None:
    await api.put("/_admin/faults", json={REFUNDS: {"fail_first": 2}})
    codes = [(await refund(api)).status_code for _ in range(3)]
    assert codes == [503, 503, 201]
    assert len((await api.get("/orders/44444/actions")).json()["actions"]) == 1  # failed before the effect
    # Applying the setting again starts the count again.
    await api.put("/_admin/faults", json={REFUNDS: {"fail_first": 1}})
    assert [(await refund(api, "k2")).status_code for _ in range(2)] == [503, 201]


@pytest.mark.parametrize("bad", [{"fail_after_effect_rate": 1.5}, {"fail_after_effect_rate": -0.1},
                                 {"fail_first": -1}, {"fail_first": "many"}, {"fail_after_rate": 0.5}])
async def test_bad_fault_settings_are_refused_and_change_nothing(api: httpx.AsyncClient, bad: dict) -> None:
    await api.put("/_admin/faults", json={REFUNDS: {"error_rate": 0.5}})
    r = await api.put("/_admin/faults", json={REFUNDS: bad})
    assert r.status_code == 422 and "invalid fault settings" in r.json()["detail"]
    assert (await api.get("/_admin/faults")).json()[REFUNDS]["error_rate"] == 0.5
