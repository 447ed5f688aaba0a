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
