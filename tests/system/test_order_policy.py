"""Policy per order, re-checked where it acts: limits count the order's history, amounts are finite and above
zero, and the execution coordinator applies the same rules to fresh data before any side effect."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import nats
import pytest

from actors.base import PermanentError
from actors.commerce import CommerceClient
from actors.domain import WITH_ACTION, ActionPlan, CustomerContext, Entities, Intent, Message, new_message
from actors.execution_coordinator import ExecutionCoordinator
from actors.policy import decide_action
from config.settings import Settings
from mocks.app import create_app
from mocks.faults import Faults
from saga.log import SagaLog
from saga.transport import publish
from supportmesh.credentials import nats_options

from tests.support.chat_client import answer
from tests.support.fakes import FakeContext, make_message

ORDER = {"order_id": "44444", "status": "delivered", "total": 290.0, "refundable_amount": 290.0,
         "refunded_total": 0.0, "refunds_active": 0, "replacements_active": 0}


def refund(amount: float | None = None) -> Intent:
    return Intent(name="refund_request", confidence=0.9, entities=Entities(amount=amount))


REPLACE = Intent(name="replacement_request", confidence=0.9)


def decided(intent: Intent, tier: str = "premium", **order: object):
    o = {**ORDER, **order}
    return decide_action(intent, CustomerContext(customer={"id": "cust_001", "tier": tier}, orders=[o], order=o))


@pytest.mark.parametrize("intent,tier,history,approved,human,note", [
    (refund(99), "standard", {}, True, False, None),
    (refund(99), "standard", {"refunded_total": 10.0, "refunds_active": 1}, False, True, "$100 on one order"),
    (refund(10), "premium", {"refunded_total": 20.0, "refunds_active": 2}, False, True, "refunded twice"),
    (refund(10), "premium", {"replacements_active": 1}, False, True, "already has a replacement"),
    (REPLACE, "premium", {"replacements_active": 1}, False, True, "already has a replacement"),
    (REPLACE, "premium", {"refunded_total": 5.0, "refunds_active": 1}, False, True, "already refunded"),
    (REPLACE, "premium", {}, True, False, None),
    (refund(0), "premium", {}, False, False, "above zero"),
    (refund(-5), "premium", {}, False, False, "above zero"),
    (refund(None), "premium", {}, True, False, None),  # no amount named: what is still refundable
])
def test_policy_counts_the_orders_history(intent, tier, history, approved, human, note) -> None:
    decision = decided(intent, tier, **history)
    assert decision.plan.approved is approved and decision.needs_human is human, decision
    if note:
        assert note in decision.plan.policy_notes[0]
    if intent.entities.amount is None and approved and intent.name == "refund_request":
        assert decision.plan.amount == ORDER["refundable_amount"]


def test_nan_and_infinity_never_reach_the_policy() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            Entities(amount=value)
        with pytest.raises(ValueError):
            ActionPlan(action="refund", order_id="44444", amount=value, approved=True)


# ---- the order resource's history, and the coordinator's re-check, against the mock API in process ------------

async def test_the_order_resource_counts_active_actions() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Faults({}))),
                                 base_url="http://mocks") as api:
        done = []
        for path, body in (("refunds", {"amount": 5.0}), ("refunds", {"amount": 2.5}), ("replacements", {})):
            r = await api.post(f"/orders/44444/{path}", json=body, headers={"Idempotency-Key": path + str(body)})
            done.append(r.json()["action_id"])
        order = (await api.get("/orders/44444")).json()
        assert (order["refunded_total"], order["refunds_active"], order["replacements_active"]) == (7.5, 2, 1)
        await api.post(f"/actions/{done[0]}/undo")
        order = (await api.get("/orders/44444")).json()
        assert (order["refunded_total"], order["refunds_active"], order["replacements_active"]) == (2.5, 1, 1)


@pytest.fixture
def coordinator():
    actor = ExecutionCoordinator()
    actor.api = CommerceClient(Settings(), transport=httpx.ASGITransport(app=create_app(Faults({}))))
    return actor


async def actions_on(actor: ExecutionCoordinator, order_id: str) -> list[dict]:
    return await actor.api.order_actions(order_id)


@pytest.mark.parametrize("plan,why", [
    (ActionPlan(action="refund", order_id="67890", amount=10.0, approved=True), "does not belong"),
    (ActionPlan(action="refund", order_id="44444", amount=0.0, approved=True), "above zero"),
    (ActionPlan(action="refund", order_id="44444", amount=None, approved=True), "without an amount"),
    (ActionPlan(action="refund", order_id="44444", amount=1000.0, approved=True), "most that can be refunded"),
    (ActionPlan(action="cancel", order_id="12345", amount=1.0, approved=True), "cannot be cancelled"),
    (ActionPlan(action="replacement", order_id="99999999", approved=True), "not found"),
])
async def test_a_forged_plan_performs_nothing(coordinator, plan: ActionPlan, why: str) -> None:
    with pytest.raises(PermanentError, match=why):
        await coordinator.handle(make_message("x", action_plan=plan), FakeContext())
    if plan.order_id != "99999999":
        assert await actions_on(coordinator, plan.order_id) == []


async def test_the_recheck_reads_the_orders_history_fresh(coordinator) -> None:
    replace = ActionPlan(action="replacement", order_id="33333", approved=True)
    await coordinator.handle(make_message("x", action_plan=replace), FakeContext())
    again = make_message("x", action_plan=replace)  # another saga with the same (now stale) plan
    with pytest.raises(PermanentError, match="already has a replacement"):
        await coordinator.handle(again, FakeContext())
    assert len(await actions_on(coordinator, "33333")) == 1


# ---- end to end against the whole mesh ------------------------------------------------------------------------

def chat(mesh, text: str, email: str = "user@example.com") -> dict:
    """The answer to `text` from the signed-in customer `email` (a 202 followed to the outcome)."""
    return answer(mesh.gateway_url, text, email=email)


def actions_of(mesh, order_id: str) -> list[dict]:
    return httpx.get(f"{mesh.mocks_url}/orders/{order_id}/actions", timeout=10).json()["actions"]


@pytest.fixture
def fresh(mesh):
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    return mesh


@pytest.mark.e2e
@pytest.mark.parametrize("text,order_id,automatic", [
    ("Please refund $10 for order 12345", "12345", 2),  # a third partial refund on one order
    ("I need a replacement for order 33333, it never came", "33333", 1),  # a second replacement
])
def test_beyond_the_orders_limit_a_human_decides(fresh, text: str, order_id: str, automatic: int) -> None:
    for _ in range(automatic):
        body = chat(fresh, text)
        assert body["status"] == "resolved" and body["action_plan"]["approved"] is True
    over = chat(fresh, text)
    # Not automatic: it waits for a colleague's approval (tests/system/test_waits.py decides on it).
    assert over["status"] == "pending_approval" and over["action_plan"]["approved"] is False
    assert over["action_plan"]["requires"] == "approval"
    assert len(actions_of(fresh, order_id)) == automatic


@pytest.mark.e2e
def test_a_zero_dollar_refund_never_executes(fresh) -> None:
    body = chat(fresh, "Please refund $0 for order 44444")
    assert body["action_plan"]["action"] == "refund" and body["action_plan"]["approved"] is False
    assert "above zero" in body["response"]
    assert actions_of(fresh, "44444") == []


async def publish_forged(mesh, plan: ActionPlan, email: str = "user@example.com") -> str:
    """A valid message, as if sent by any client of the bus, at the execution coordinator's step with an
    approved plan the decision router never made. It claims a verified customer too (a forger sets every field):
    what stops it must be the re-check of the order's owner and the policy, not the flag."""
    message = new_message(session_id="forged", customer_email=email, customer_message="refund please",
                          steps=WITH_ACTION, customer_verified=True)
    message = message.enriched({"action_plan": plan})
    route = message.route.model_copy(update={"current_step": WITH_ACTION.index("execution_coordinator")})
    message = Message.model_validate({**message.model_dump(), "route": route.model_dump()})
    nc = await nats.connect(**nats_options(mesh.endpoints))
    try:
        await publish(nc.jetstream(timeout=10), message)
    finally:
        await nc.close()
    return message.message_id


async def saga_events(mesh, message_id: str) -> list[dict]:
    """The saga log of a message, read from NATS: a forged message has no owner, so no customer may read it
    through the gateway."""
    nc = await nats.connect(**nats_options(mesh.endpoints))
    try:
        log = await SagaLog.open(nc.jetstream(timeout=10))
        return [e.model_dump(mode="json") for e in await log.history(message_id)]
    finally:
        await nc.close()


@pytest.mark.e2e
async def test_a_forged_execution_message_performs_no_action(fresh) -> None:
    other = ActionPlan(action="refund", order_id="67890", amount=20.0, approved=True, reason="refund_request")
    over = ActionPlan(action="refund", order_id="44444", amount=10.0, approved=True, reason="refund_request")
    # Over the limit: order 44444 already has two refunds, so a third needs a human.
    for amount in (1.0, 2.0):
        httpx.post(f"{fresh.mocks_url}/orders/44444/refunds", json={"amount": amount}, timeout=10,
                   headers={"Idempotency-Key": uuid.uuid4().hex}).raise_for_status()
    ids = [await publish_forged(fresh, other), await publish_forged(fresh, over)]
    deadline = time.monotonic() + 60
    failed: dict[str, dict] = {}
    while len(failed) < len(ids) and time.monotonic() < deadline:
        for message_id in ids:
            for e in await saga_events(fresh, message_id):
                if e["kind"] == "step_failed" and e["actor"] == "execution_coordinator":
                    failed[message_id] = e
        await asyncio.sleep(0.2)  # polling interval, not synchronisation
    assert set(failed) == set(ids), failed
    assert "does not belong" in str(failed[ids[0]]["data"]) and "refunded twice" in str(failed[ids[1]]["data"])
    assert actions_of(fresh, "67890") == []
    assert len(actions_of(fresh, "44444")) == 2
