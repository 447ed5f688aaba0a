"""The widget in a real browser: headless Debian Chromium driven by Playwright, against the whole mesh.
Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, mesh):
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    page.goto(mesh.gateway_url + "/")
    yield page
    context.close()


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


def test_bad_email_shows_the_reason(page) -> None:
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
