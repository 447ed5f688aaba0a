"""The widget in a real browser: headless Debian Chromium driven by Playwright, against the whole mesh.
Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import pytest

from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.e2e


@pytest.fixture
def page(browser, mesh):
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    page.goto(mesh.gateway_url + "/")
    sign_in(page, "user@example.com")
    yield page
    context.close()


def sign_in(page, email: str) -> None:
    """Sign in through the demo picker (as a shop's page would hand the widget a token)."""
    page.get_by_test_id("sign-in").wait_for(timeout=10_000)
    page.get_by_test_id("demo-customer").select_option(email)
    page.get_by_test_id("sign-in-button").click()
    page.get_by_test_id("signed-in").wait_for(timeout=10_000)
    assert page.get_by_test_id("who").inner_text() == email


def send(page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("send-button").click()


def test_complaint_gets_a_reply_with_badge_and_links(page) -> None:
    send(page, "My order 12345 is late!")
    reply = page.get_by_test_id("agent-message").last
    reply.wait_for(timeout=20_000)
    assert "Distribution Center" in reply.inner_text()
    assert reply.get_by_test_id("status-badge").inner_text().lower() == "resolved"
    assert reply.get_by_test_id("trace-link").get_attribute("href").startswith("http")
    page.screenshot(path=str(ARTIFACTS / "widget-resolved.png"), full_page=True)

    reply.get_by_test_id("timeline-link").click()
    page.wait_for_selector("#timeline tbody tr")
    table = page.locator("#timeline").inner_text()
    assert "sentiment_analyzer" in table and "response_aggregator" in table and "step completed" in table
    page.screenshot(path=str(ARTIFACTS / "saga-timeline.png"), full_page=True)


def test_critical_message_is_escalated(page) -> None:
    send(page, "This is fraud, I will call my lawyer")
    reply = page.get_by_test_id("agent-message").last
    reply.wait_for(timeout=20_000)
    assert reply.get_by_test_id("status-badge").inner_text().lower() == "escalated"
    page.screenshot(path=str(ARTIFACTS / "widget-escalated.png"), full_page=True)


def test_markup_in_a_message_is_shown_as_text(page) -> None:
    payload = "<img src=x onerror=alert(1)> where is order 12345?"
    send(page, payload)
    page.get_by_test_id("agent-message").last.wait_for(timeout=20_000)
    assert page.locator("#conversation img").count() == 0
    assert payload in page.locator("#conversation").inner_text()
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_sign_in_picker_then_chat_as_that_customer_and_as_a_guest(page) -> None:
    page.get_by_test_id("sign-out").click()
    sign_in(page, "jane.smith@example.com")
    send(page, "Where is my order 67890?")
    reply = page.get_by_test_id("agent-message").last
    reply.wait_for(timeout=20_000)
    assert "67890" in reply.inner_text() and "Jane" in reply.inner_text()
    page.screenshot(path=str(ARTIFACTS / "widget-signed-in.png"), full_page=True)
    # Signed out: a guest, in a new conversation; Jane's order is not theirs to see without its email.
    page.get_by_test_id("sign-out").click()
    page.get_by_test_id("sign-in").wait_for(timeout=10_000)
    assert page.get_by_test_id("agent-message").count() == 0
    send(page, "Where is my order 67890?")
    reply = page.get_by_test_id("agent-message").last
    reply.wait_for(timeout=20_000)
    assert "Jane" not in reply.inner_text() and "delivered" not in reply.inner_text()
    assert "email address it was placed with" in reply.inner_text()


def test_bad_email_shows_the_reason(page) -> None:
    page.get_by_test_id("sign-out").click()  # a guest names the email of an order
    page.get_by_test_id("email-input").fill("not-an-email")
    send(page, "hello")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=10_000)
    assert "customer_email" in error.inner_text()


def test_conversation_survives_a_reload(page) -> None:
    send(page, "Where is my order 12345?")
    page.get_by_test_id("agent-message").last.wait_for(timeout=20_000)
    count = page.get_by_test_id("agent-message").count()
    page.reload()
    page.get_by_test_id("agent-message").nth(count - 1).wait_for(timeout=10_000)
    assert page.get_by_test_id("agent-message").count() == count


@pytest.fixture
def slow_context(mesh):
    """The context step takes 3 s (the customer API answers slowly), so a message outlives the first moments."""
    import httpx

    faults = {"GET /customers/{email}": {"latency_ms": 3000}}
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    yield
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()


def test_slow_answer_shows_live_progress_then_the_reply(page, slow_context) -> None:
    answered = page.get_by_test_id("agent-message").count()
    with page.expect_response(lambda r: r.url.endswith("/api/chat") and r.request.method == "POST") as posted:
        send(page, "My order 12345 is late!")
    assert posted.value.status == 202  # the widget asks for the message id at once and follows the saga

    steps = page.get_by_test_id("progress-steps").last
    working = steps.locator("li.working", has_text="context_retriever")
    working.wait_for(timeout=15_000)  # the slow step, live, while the answer is not there yet
    assert "Looking up your account and orders" in working.inner_text()
    assert steps.locator("li.done", has_text="intent_analyzer").count() == 1
    assert page.get_by_test_id("agent-message").count() == answered
    page.screenshot(path=str(ARTIFACTS / "widget-progress.png"), full_page=True)

    reply = page.get_by_test_id("agent-message").nth(answered)
    reply.wait_for(timeout=30_000)
    assert "Distribution Center" in reply.inner_text()
    assert reply.get_by_test_id("status-badge").inner_text().lower() == "resolved"
    assert page.get_by_test_id("progress-steps").count() == 0  # the pending bubble became the answer
    assert page.get_by_test_id("progress").is_hidden()


def test_widget_stops_waiting_after_a_bounded_time_with_the_message_id(page, mesh, slow_context) -> None:
    import json

    import httpx

    config = httpx.get(f"{mesh.gateway_url}/api/config", timeout=10).json()
    assert config["follow_timeout_s"] > 0
    short = json.dumps({**config, "follow_timeout_s": 1})
    page.route("**/api/config", lambda route: route.fulfill(status=200, content_type="application/json", body=short))
    page.reload()
    with page.expect_response(lambda r: r.url.endswith("/api/chat") and r.request.method == "POST") as posted:
        send(page, "Where is my order 12345?")
    message_id = posted.value.json()["message_id"]

    gave_up = page.get_by_test_id("timed-out")
    gave_up.wait_for(timeout=15_000)
    assert "No answer yet after 1 seconds" in gave_up.inner_text() and message_id in gave_up.inner_text()
    assert message_id in gave_up.get_by_test_id("timeline-link").get_attribute("href")
    assert page.get_by_test_id("send-button").is_enabled()


# ---- actions as they stand, and every saga event named ----------------------------------------------------


def test_every_saga_event_kind_has_a_label(page, mesh) -> None:
    from saga.log import EVENT_KINDS

    # The widget's progress lines, and the timeline's (both pages' scripts are ES modules: imported to read them).
    kinds = "async (path) => Object.keys((await import(path))[path.includes('chat') ? 'KIND_LABELS' : 'EVENT_LABELS'])"
    assert set(page.evaluate(kinds, "/static/chat.js")) == EVENT_KINDS
    page.goto(f"{mesh.gateway_url}/saga.html?id=unknown")
    assert set(page.evaluate(kinds, "/static/saga.js")) == EVENT_KINDS


@pytest.fixture
def refund_done_then_lost(mesh):
    """Refunds happen but their answers are lost (503 after the effect): the execution step runs out of
    attempts with the refund done, so the escalation router finds it at the orders API and undoes it."""
    import httpx

    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    faults = {"POST /orders/{order_id}/refunds": {"fail_after_effect_rate": 1.0}}
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    yield
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()


def test_a_compensated_refund_reads_as_reversed_in_the_widget_and_the_timeline(page, mesh, refund_done_then_lost):
    import httpx

    answered = page.get_by_test_id("agent-message").count()
    with page.expect_response(lambda r: r.url.endswith("/api/chat") and r.request.method == "POST") as posted:
        send(page, "I want a refund for order 12345")
    message_id = posted.value.json()["message_id"]
    asked = page.get_by_test_id("agent-message").nth(answered)
    asked.wait_for(timeout=60_000)
    assert asked.get_by_test_id("status-badge").inner_text().lower() == "needs_confirmation"
    send(page, "yes")  # the refund happens (and is lost, then undone) only after the customer's yes
    answered += 1
    reply = page.get_by_test_id("agent-message").nth(answered)
    reply.wait_for(timeout=60_000)

    # The refund really happened and was really undone.
    actions = httpx.get(f"{mesh.mocks_url}/orders/12345/actions", timeout=10).json()["actions"]
    assert [a["status"] for a in actions if a["idempotency_key"].startswith(f"{message_id}:")] == ["undone"]
    assert reply.get_by_test_id("status-badge").inner_text().lower() == "escalated"
    action = reply.get_by_test_id("action")
    assert action.count() == 1
    assert "refund" in action.inner_text() and "on order 12345 — reversed" in action.inner_text()
    assert action.get_attribute("data-state") == "reversed"
    page.screenshot(path=str(ARTIFACTS / "widget-reversed.png"), full_page=True)
    # The same after a reload (the conversation is rebuilt from the history and the saga log).
    page.reload()
    again = page.get_by_test_id("agent-message").nth(answered)
    again.wait_for(timeout=10_000)
    assert again.get_by_test_id("action").inner_text() == action.inner_text()

    again.get_by_test_id("timeline-link").click()
    page.locator('#timeline tr[data-kind="compensation_completed"]').wait_for(timeout=10_000)
    row = page.locator('#timeline tr[data-kind="compensation_completed"]')
    assert "compensation completed (action reversed)" in row.inner_text()
    assert "refund" in row.inner_text() and "on order 12345" in row.inner_text() and "reversed" in row.inner_text()
    assert "compensation started (undoing an action)" in page.locator("#timeline").inner_text()
    assert "— reversed" in page.get_by_test_id("actions").inner_text()
    page.screenshot(path=str(ARTIFACTS / "saga-compensation.png"), full_page=True)


async def deliver_failed_answer(mesh, session_id: str) -> str:
    """A failed saga's answer, as the runtime builds it (saga/results.py marks its reversed refund `undone`),
    delivered by the mesh's real response aggregator into this session's history; returns the message id.
    A second action names an order with markup (shown as text, never parsed)."""
    import nats

    from actors.domain import ActionPlan, ExecutedAction, ExecutionResult, new_message
    from actors.results import failed_enrichment
    from saga.log import SagaEvent, SagaLog
    from saga.transport import start_saga
    from supportmesh.credentials import nats_options

    message = new_message(session_id=session_id, customer_email="user@example.com",
                          customer_message="I want a refund for order 12345", steps=["response_aggregator"],
                          customer_verified=True)
    mid = message.message_id
    refund = ExecutedAction(action="refund", order_id="12345", action_id=f"act_{mid[:8]}", amount=5.0,
                            idempotency_key=f"{mid}:refund")
    other = ExecutedAction(action="replacement", order_id="<img src=x onerror=alert(1)>",
                           action_id=f"act2_{mid[:8]}", idempotency_key=f"{mid}:replacement")
    message = message.enriched({
        "action_plan": ActionPlan(action="refund", order_id="12345", amount=5.0, approved=True, reason="refund"),
        "execution_result": ExecutionResult(success=True, actions=[refund, other])})
    undone = SagaEvent(message_id=mid, kind="compensation_completed", actor="escalation_router", step_index=1,
                       seq=1, data={"action": "refund", "order_id": "12345", "action_id": refund.action_id})
    failed = message.enriched(failed_enrichment(message, [undone]))
    failed = failed.model_copy(update={"metadata": failed.metadata.model_copy(update={"outcome": "failed"})})
    nc = await nats.connect(**nats_options(mesh.endpoints))
    try:
        js = nc.jetstream(timeout=10)
        await start_saga(js, await SagaLog.open(js), failed)
    finally:
        await nc.close()
    return mid


def test_an_action_marked_undone_reads_as_reversed_not_done(page, mesh) -> None:
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    session = page.evaluate("() => localStorage.getItem('supportmesh.session')")
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        message_id = pool.submit(asyncio.run, deliver_failed_answer(mesh, session)).result(timeout=60)
    deadline = time.monotonic() + 30
    while httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10, headers=mesh.auth()).status_code != 200:
        assert time.monotonic() < deadline, "the aggregator never answered"
        time.sleep(0.2)
    result = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10, headers=mesh.auth()).json()
    assert [a["status"] for a in result["execution_result"]["actions"]] == ["undone", "active"]

    page.reload()  # the widget rebuilds the conversation from the session's history
    reply = page.locator('[data-testid="agent-message"]', has=page.locator(f'a[href$="{message_id}"]'))
    reply.wait_for(timeout=10_000)
    actions = reply.get_by_test_id("action")
    assert actions.nth(0).inner_text() == "refund of $5.00 on order 12345 — reversed"
    assert actions.nth(0).get_attribute("data-state") == "reversed"
    # An action still in effect reads as done (no state after it); its markup is text.
    assert actions.nth(1).inner_text() == "replacement on order <img src=x onerror=alert(1)>"
    assert page.locator("#conversation img").count() == 0 and page.dialogs == []  # type: ignore[attr-defined]

    page.goto(f"{mesh.gateway_url}/saga.html?id={message_id}")
    page.get_by_test_id("actions").wait_for(timeout=10_000)
    assert page.get_by_test_id("actions").get_by_test_id("action").nth(0).inner_text() == \
        "refund of $5.00 on order 12345 — reversed"
