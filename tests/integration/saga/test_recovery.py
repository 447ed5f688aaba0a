"""Recovery from the saga log with the real execution coordinator, escalation router and response aggregator
against the real mock APIs: side effects of a failed saga are undone (retried until done, or honestly left to a
human), the reply is built from the whole saga history, a failing answer step does not loop, and effects whose
answer was lost are found by their idempotency keys and undone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from actors.base import Actor, StepContext
from actors.escalation_router import EscalationRouter
from actors.execution_coordinator import ExecutionCoordinator
from actors.response_aggregator import ResponseAggregator
from saga.log import SagaEvent
from saga.protocol import ActionPlan, Message, new_message
from saga.results import ChatResult, ResultStore
from saga.transport import start_saga

from tests.support.harness import Harness, RecordingProxy, kinds, start_mocks
from tests.support.toy_actors import BrokenAggregator, Flaky

WITH_FLAKY = ["execution_coordinator", "flaky", "response_aggregator"]
UNDO = "POST /actions/{action_id}/undo"
REFUNDS = "POST /orders/{order_id}/refunds"


@pytest.fixture(scope="module")
def mocks_url(tmp_path_factory):
    proc, url = start_mocks(tmp_path_factory.mktemp("mocks"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def api(mocks_url: str):
    """A client of the mock APIs, reset to the seed data; faults are cleared after the test."""
    with httpx.Client(base_url=mocks_url, timeout=10) as client:
        client.post("/_admin/reset").raise_for_status()
        client.put("/_admin/faults", json={}).raise_for_status()
        try:
            yield client
        finally:
            client.put("/_admin/faults", json={}).raise_for_status()


@contextlib.asynccontextmanager
async def mesh(tmp_path, mocks_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, *,
               aggregator: type[Actor] = ResponseAggregator, deadline_s: float = 60.0) -> AsyncIterator[Harness]:
    """The execution coordinator, flaky, the escalation router and an aggregator on a fresh nats-server. The
    compensation deadline is one of the settings every process gets (not an environment of its own)."""
    h = Harness(tmp_path, customers_api_url=mocks_url, orders_api_url=mocks_url, tracking_api_url=mocks_url,
                redis_url=redis_url, sqlite_path=str(tmp_path / "history.db"), redelivery_delay_s=0.1,
                compensation_deadline_s=deadline_s, compensation_backoff_max_s=0.5)
    await h.start()
    try:
        for cls in (ExecutionCoordinator, Flaky, EscalationRouter, aggregator):
            await h.run_actor(cls)
        yield h
    finally:
        await h.close()


async def run_refund(h: Harness, text: str, steps: list[str], order_id: str = "44444", amount: float = 5.0,
                     status: str = "escalated", answered_once: bool = False,
                     ) -> tuple[Message, ChatResult, list[SagaEvent], list[ChatResult]]:
    """Start a saga that refunds, wait for it to end with `status`; returns the message, the stored answer, the
    saga history and the answers published on the reply subject. `answered_once`: watch the reply subject past
    ack_wait and assert the stored answer was published once, and only it."""
    replies: list[ChatResult] = []
    subject = f"test.reply.{id(replies)}"

    async def collect(msg: Any) -> None:
        replies.append(ChatResult.from_bytes(msg.data))

    sub = await h.nc.subscribe(subject, cb=collect)
    message = new_message(session_id="s-escalation", customer_email="user@example.com", customer_message=text,
                          steps=steps, reply_subject=subject, customer_verified=True)
    plan = ActionPlan(action="refund", order_id=order_id, amount=amount, approved=True, reason="refund_request")
    message = message.enriched({"action_plan": plan})
    await start_saga(h.js, h.saga, message)
    state = await h.wait_terminal(message.message_id, timeout=45)
    assert state.status == status, state
    result = await (await ResultStore.open(h.js, ttl_s=3600)).get(message.message_id)
    assert result is not None
    if answered_once:
        await watch_past_ack_wait(h, replies)
        assert [r.response for r in replies] == [result.response]
    await sub.unsubscribe()
    return message, result, await h.events(message.message_id), replies


async def watch_past_ack_wait(h: Harness, replies: list[ChatResult], margin_s: float = 1.0) -> None:
    """Keep collecting answers until ack_wait (plus a margin) has passed, or a second answer came: an answering
    step redelivered after its ack wait, or a failure handled twice, would have answered again by then."""
    deadline = time.monotonic() + h.settings.ack_wait_s + margin_s
    while len(replies) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def my_actions(api: httpx.Client, order_id: str, message: Message) -> list[dict[str, Any]]:
    actions = api.get(f"/orders/{order_id}/actions").json()["actions"]
    return [a for a in actions if a["idempotency_key"].startswith(f"{message.message_id}:")]


def ticket_of(api: httpx.Client, message: Message) -> dict[str, Any]:
    tickets = api.get("/tickets", params={"message_id": message.message_id}).json()["tickets"]
    assert len(tickets) == 1
    return tickets[0]


def count(events: list[SagaEvent], kind: str) -> int:
    return sum(1 for e in events if e.kind == kind)


def assert_no_ticket_claimed(api: httpx.Client, message: Message, events: list[SagaEvent],
                             result: ChatResult) -> None:
    """The tickets API was down: no ticket exists, the saga log says so, and the answer claims no colleague
    has the message; it gives its reference and asks the customer to come back."""
    assert api.get("/tickets", params={"message_id": message.message_id}).json()["tickets"] == []
    failed = [e for e in events if e.kind == "saga_failed"]
    assert failed and all(e.data["ticket_id"] is None for e in failed)
    assert failed[0].data["ticket"] == "failed" and "ticket_error" in failed[0].data
    assert "colleague" not in result.response and "follow up" not in result.response
    assert f"reference {message.message_id}" in result.response and "contact our support team" in result.response


# ---- a later step fails: the refund is undone -----------------------------------------------------------


async def test_refund_is_undone_when_a_later_step_fails_for_good(tmp_path, mocks_url, redis_url, monkeypatch,
                                                                 api) -> None:
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch) as h:
        message, result, events, _ = await run_refund(h, "fail-permanent", WITH_FLAKY)
    order = [k[0] for k in kinds(events)]
    assert order.index("action_executed") < order.index("step_failed") < order.index("compensation_started") \
        < order.index("compensation_completed") < order.index("escalated")
    assert [a["status"] for a in my_actions(api, "44444", message)] == ["undone"]
    assert result.status == "escalated"
    assert "reversed" in result.response and "44444" in result.response
    assert "Compensated" in ticket_of(api, message)["summary"]
    # The answer's execution result shows the refund as it stands: reversed, not done.
    assert [a["status"] for a in result.execution_result["actions"]] == ["undone"]


async def test_transient_failure_is_resumed_once_then_compensated(tmp_path, mocks_url, redis_url, monkeypatch,
                                                                  api) -> None:
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch) as h:
        message, _, events, _ = await run_refund(h, "fail-always", WITH_FLAKY, order_id="33333", amount=7.0)
    resumed = [e for e in events if e.kind == "redelivered" and e.data.get("source") == "escalation_router"]
    assert len(resumed) == 1
    # The resumed route ran flaky again (and failed again), without repeating the refund.
    assert count(events, "step_failed") == 2
    assert count(events, "action_executed") == 1
    assert count(events, "compensation_completed") == 1
    assert [a["status"] for a in my_actions(api, "33333", message)] == ["undone"]


# ---- several effects are undone newest first -------------------------------------------------------------

# The saga's actions, in the order it performs them: each on its own order of the demo customer.
PLANS = [ActionPlan(action="refund", order_id="44444", amount=5.0, approved=True, reason="refund_request"),
         ActionPlan(action="cancel", order_id="55555", approved=True, reason="cancel_request"),
         ActionPlan(action="replacement", order_id="33333", approved=True, reason="lost_parcel")]


class Replan(Actor):
    """Plans the saga's next action once the previous one is executed (a toy processor: it lets one route run
    the real execution coordinator several times, one side effect each)."""

    name = "replan"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        done = message.payload.action_plan
        following = PLANS[[p.action for p in PLANS].index(done.action) + 1]
        return {"action_plan": following}


async def test_three_effects_are_compensated_in_reverse_order(tmp_path, mocks_url, redis_url, monkeypatch,
                                                              api) -> None:
    """A refund, a cancellation and a replacement, then a later step fails for good: the escalation router
    undoes them newest first, in the saga log (each undo started and completed before the next starts) and
    at the orders API (the undo calls it receives, recorded by a proxy in front of it)."""
    steps = ["execution_coordinator", "replan", "execution_coordinator", "replan", "execution_coordinator",
             "flaky", "response_aggregator"]
    before = {oid: api.get(f"/orders/{oid}").json() for oid in ("44444", "55555", "33333")}
    with RecordingProxy(mocks_url) as proxy:
        async with mesh(tmp_path, proxy.url, redis_url, monkeypatch) as h:
            await h.run_actor(Replan)
            message, result, events, _ = await run_refund(h, "fail-permanent", steps)

    executed = [e.data for e in events if e.kind == "action_executed"]
    assert [(d["action"], d["order_id"]) for d in executed] == [(p.action, p.order_id) for p in PLANS]
    ids = [d["action_id"] for d in executed]
    newest_first = list(reversed(ids))
    compensation = [(e.kind, e.data["action_id"]) for e in events if e.kind.startswith("compensation_")]
    assert compensation == [(kind, a) for a in newest_first for kind in ("compensation_started",
                                                                         "compensation_completed")], compensation
    order = [k[0] for k in kinds(events)]
    assert order.index("step_failed") < order.index("compensation_started")
    last_undo = max(i for i, kind in enumerate(order) if kind == "compensation_completed")
    assert last_undo < order.index("escalated")
    undo_calls = [path for method, path in proxy.requests if method == "POST" and path.endswith("/undo")]
    assert undo_calls == [f"/actions/{a}/undo" for a in newest_first]
    # Every effect is gone at the API, and each order is as it was.
    for plan in PLANS:
        assert [a["status"] for a in my_actions(api, plan.order_id, message)] == ["undone"]
        after = api.get(f"/orders/{plan.order_id}").json()
        assert {k: after[k] for k in ("status", "refundable_amount")} == \
            {k: before[plan.order_id][k] for k in ("status", "refundable_amount")}
    assert result.status == "escalated"
    for noun, order_id in (("refund", "44444"), ("cancellation", "55555"), ("replacement", "33333")):
        assert f"started a {noun} on order {order_id}, and I've reversed it" in result.response, result.response


# ---- compensation retried until done ---------------------------------------------------------------------


async def test_undo_failing_several_times_is_retried_until_it_succeeds(tmp_path, mocks_url, redis_url, monkeypatch,
                                                                        api) -> None:
    # More failures than the step's retry budget (3 attempts in the harness): the old design failed the saga.
    api.put("/_admin/faults", json={UNDO: {"fail_first": 5}}).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch) as h:
        message, result, events, _ = await run_refund(h, "fail-permanent", WITH_FLAKY)
    assert count(events, "compensation_completed") == 1 and count(events, "saga_failed") == 0
    [action] = my_actions(api, "44444", message)
    assert action["status"] == "undone"
    assert api.get("/orders/44444").json()["refundable_amount"] == 29.0
    assert "reversed" in result.response and "refund on order 44444" in result.response
    assert "Compensated: refund" in ticket_of(api, message)["summary"]


async def test_undo_that_never_succeeds_is_left_to_a_human_and_said_so(tmp_path, mocks_url, redis_url, monkeypatch,
                                                                       api) -> None:
    api.put("/_admin/faults", json={UNDO: {"error_rate": 1.0}}).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch, deadline_s=2.0) as h:
        message, result, events, _ = await run_refund(h, "fail-permanent", WITH_FLAKY)
    [action] = my_actions(api, "44444", message)
    assert action["status"] == "active" and count(events, "compensation_completed") == 0
    assert "reversed it" not in result.response
    assert "could not reverse it automatically" in result.response and "44444" in result.response
    ticket = ticket_of(api, message)
    assert ticket["priority"] == "high"
    assert f"REVERSAL PENDING: refund {action['action_id']} on 44444" in ticket["summary"]
    [escalated] = [e for e in events if e.kind == "escalated"]
    assert escalated.data["pending_reversal"] == [action["action_id"]]
    # The log itself says the undo was given up on, not only that it started.
    [gave_up] = [e for e in events if e.kind == "compensation_failed"]
    assert gave_up.data["action_id"] == action["action_id"] and "still failing" in gave_up.data["error"]


# ---- the reply names what an earlier attempt undid -------------------------------------------------------


async def test_ticket_failing_once_after_the_undo_still_names_the_undone_refund(tmp_path, mocks_url, redis_url,
                                                                                monkeypatch, api) -> None:
    api.put("/_admin/faults", json={"POST /tickets": {"fail_first": 1}}).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch) as h:
        message, result, events, _ = await run_refund(h, "fail-permanent", WITH_FLAKY)
    assert count(events, "retry_scheduled") >= 1  # the router's step was retried after the ticket failed
    assert count(events, "compensation_completed") == 1
    assert [a["status"] for a in my_actions(api, "44444", message)] == ["undone"]
    assert "reversed" in result.response and "refund on order 44444" in result.response
    assert "Compensated: refund" in ticket_of(api, message)["summary"]


# ---- a failing answer step does not loop -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["store down (permanent)", "store down (transient)"])
async def test_aggregator_failing_for_good_ends_the_saga_without_looping(tmp_path, mocks_url, redis_url,
                                                                        monkeypatch, api, text) -> None:
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch, aggregator=BrokenAggregator) as h:
        message, result, events, _ = await run_refund(h, text, ["execution_coordinator", "response_aggregator"],
                                                      order_id="33333", answered_once=True)
        calls = h.executions("response_aggregator", message.message_id)
    # One failing aggregator step (its retries only), one escalation, and the end: no route growing to 64 steps.
    assert {step for _, _, step, _ in calls} == {1} and len(calls) <= h.settings.max_attempts
    assert max(e.step_index for e in events) == 2
    assert count(events, "escalated") == 1 and count(events, "redelivered") <= len(calls)
    [done] = [e for e in events if e.kind == "saga_completed"]
    assert done.data["status"] == "escalated"
    # The router answered the customer itself, honestly: the refund was reversed, a colleague takes over.
    assert result.status == "escalated" and "refund on order 33333" in result.response
    assert "reversed" in result.response
    assert [a["status"] for a in my_actions(api, "33333", message)] == ["undone"]


# ---- effects whose answer was lost -----------------------------------------------------------------------


async def test_ambiguous_refund_is_found_by_its_key_and_undone(tmp_path, mocks_url, redis_url, monkeypatch,
                                                               api) -> None:
    # The orders API performs the refund, then answers 503: the coordinator never learns its action id.
    api.put("/_admin/faults", json={REFUNDS: {"fail_after_effect_rate": 1.0}}).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch) as h:
        message, result, events, _ = await run_refund(h, "refund please", ["execution_coordinator",
                                                                           "response_aggregator"])
    assert count(events, "action_executed") == 0 and count(events, "step_failed") >= 1
    [action] = my_actions(api, "44444", message)  # one effect despite every retry
    assert action["status"] == "undone"
    assert api.get("/orders/44444").json()["refundable_amount"] == 29.0
    [completed] = [e for e in events if e.kind == "compensation_completed"]
    assert completed.data["action_id"] == action["action_id"] and completed.data["source"] == "orders_api"
    assert "reversed" in result.response and "refund on order 44444" in result.response
    assert f"Compensated: refund {action['action_id']}" in ticket_of(api, message)["summary"]


async def test_effect_that_cannot_be_checked_is_reported_as_unverified(tmp_path, mocks_url, redis_url, monkeypatch,
                                                                       api) -> None:
    faults = {REFUNDS: {"fail_after_effect_rate": 1.0}, "GET /orders/{order_id}/actions": {"error_rate": 1.0}}
    api.put("/_admin/faults", json=faults).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch, deadline_s=2.0) as h:
        message, result, _, _ = await run_refund(h, "refund please", ["execution_coordinator",
                                                                      "response_aggregator"])
    assert "may have started a refund on order 44444" in result.response and "reversed" not in result.response
    ticket = ticket_of(api, message)
    assert ticket["priority"] == "high" and "UNVERIFIED: a refund on 44444" in ticket["summary"]


# ---- the escalation router fails for good: the saga fails, its answer is built from the history -------------


async def test_router_failing_after_the_undo_answers_through_the_aggregator_naming_the_undo(
        tmp_path, mocks_url, redis_url, monkeypatch, api) -> None:
    # The refund is undone, then the ticket cannot be opened on any attempt: the router fails for good.
    api.put("/_admin/faults", json={"POST /tickets": {"error_rate": 1.0}}).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch) as h:
        message, result, events, _ = await run_refund(h, "fail-permanent", WITH_FLAKY, status="failed",
                                                      answered_once=True)
        rows = h.history_rows(message.message_id)
    assert [a["status"] for a in my_actions(api, "44444", message)] == ["undone"]
    assert count(events, "compensation_completed") == 1
    assert [e.actor for e in events if e.kind == "saga_failed"] == ["escalation_router"]
    # No ticket could be opened for the failed saga either: the answer promises no colleague.
    assert_no_ticket_claimed(api, message, events, result)
    # The answer says the refund was reversed, not that it is done; the action is marked undone.
    assert result.status == "escalated"
    assert "refund on order 44444 and reversed it" in result.response and "Already done" not in result.response
    assert [a["status"] for a in result.execution_result["actions"]] == ["undone"]
    # Delivered by the aggregator like any answer: two history rows, one reply, and the saga ends failed.
    assert rows == [("customer", "fail-permanent"), ("agent", result.response)]
    [done] = [e for e in events if e.kind == "saga_completed"]
    assert (done.actor, done.data["status"]) == ("response_aggregator", "failed")


async def test_router_failing_on_an_aggregator_failure_answers_directly_without_a_loop(
        tmp_path, mocks_url, redis_url, monkeypatch, api) -> None:
    api.put("/_admin/faults", json={"POST /tickets": {"error_rate": 1.0}}).raise_for_status()
    async with mesh(tmp_path, mocks_url, redis_url, monkeypatch, aggregator=BrokenAggregator) as h:
        message, result, events, _ = await run_refund(h, "store down (permanent)", ["execution_coordinator",
                                                      "response_aggregator"], order_id="33333", status="failed",
                                                      answered_once=True)
        calls = h.executions("response_aggregator", message.message_id)
    # The aggregator is not asked again to deliver the answer of a failure it caused.
    assert {step for _, _, step, _ in calls} == {1}
    assert [e.actor for e in events if e.kind == "saga_failed"] == ["escalation_router"]
    assert_no_ticket_claimed(api, message, events, result)
    assert result.status == "escalated" and "refund on order 33333 and reversed it" in result.response
    assert [a["status"] for a in my_actions(api, "33333", message)] == ["undone"]


# ---- a saga failed for good in the router's process gets a real handoff ticket -----------------------------


@pytest.mark.parametrize("tickets_up", [True, False], ids=["tickets-up", "tickets-down"])
async def test_saga_failed_by_the_routers_sweeper_is_handed_over_once_or_answered_honestly(
        tmp_path, mocks_url, redis_url, api, tickets_up) -> None:
    """A saga stuck at an error handler nobody serves: the escalation router's sweeper resumes it up to its cap,
    then fails it in the router's process. A ticket is opened once (also when the failure is handled a second
    time) and the answer names it; with the tickets API down, no ticket is claimed."""
    if not tickets_up:
        api.put("/_admin/faults", json={"POST /tickets": {"error_rate": 1.0}}).raise_for_status()
    h = Harness(tmp_path, customers_api_url=mocks_url, orders_api_url=mocks_url, tracking_api_url=mocks_url,
                redis_url=redis_url, stall_after_s=1.0, sweep_interval_s=0.3, max_sweeps=1)
    await h.start()
    try:
        router = await h.run_actor(EscalationRouter)
        await h.run_actor(ResponseAggregator)
        subject, replies = await h.reply_inbox()
        message = await h.submit(["ghost"], "nobody serves my handler", error_handler="ghost", reply_subject=subject)

        assert (await h.wait_terminal(message.message_id, timeout=30)).status == "failed"
        await wait_for_replies(replies, 1)
        # The same failure handled again (say, after a crash of the router between its writes).
        await router._fail_saga(message, actor="ghost", detail="handled twice")
        await watch_past_ack_wait(h, replies)

        events = await h.events(message.message_id)
        result = await h.results.get(message.message_id)
        rows = h.history_rows(message.message_id)
    finally:
        await h.close()
    tickets = api.get("/tickets", params={"message_id": message.message_id}).json()["tickets"]
    [failed] = [e for e in events if e.kind == "saga_failed"]
    assert result is not None and rows == [("customer", "nobody serves my handler"), ("agent", result.response)]
    assert [r.response for r in replies] == [result.response]  # answered once
    if tickets_up:
        [ticket] = tickets
        assert (failed.data["ticket_id"], failed.data["ticket"]) == (ticket["ticket_id"], "opened")
        assert f"passed it to a colleague (ticket {ticket['ticket_id']})" in result.response
        assert ticket["reason"] == "saga_failed" and ticket["customer_email"] == "user@example.com"
        assert "Saga failed for good" in ticket["summary"]
    else:
        assert_no_ticket_claimed(api, message, events, result)


async def wait_for_replies(replies: list[ChatResult], n: int, timeout: float = 15.0) -> None:
    """Until `n` answers reached the reply subject (no fixed sleeps: the machine may be busy)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(replies) < n:
        assert asyncio.get_running_loop().time() < deadline, "no answer in time"
        await asyncio.sleep(0.05)
