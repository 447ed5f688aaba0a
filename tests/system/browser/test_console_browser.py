"""The support console and the widget together in a real browser (headless Chromium, the whole mesh): a customer
asks for a person, the agent finds the conversation in the console's queue, the customer's markup shows as text
there, and the agent's reply appears in the customer's open widget without a reload; closing the hand-over tells
the widget. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import pytest

from gateway.auth import mint_agent_token
from tests.support.browser import ARTIFACTS
from tests.system.browser.test_widget_browser import send, sign_in

pytestmark = pytest.mark.e2e

WAIT_MS = 60_000  # generous: machines differ
HOSTILE = "<img src=x onerror=alert(1)> hello?"


def _page(browser, url: str):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    return context, page, dialogs


def test_agent_replies_in_the_console_and_the_widget_shows_it_live(browser, mesh) -> None:
    customer_ctx, customer, customer_dialogs = _page(browser, mesh.gateway_url + "/")
    agent_ctx, console, console_dialogs = _page(browser, mesh.gateway_url + "/console")
    try:
        sign_in(customer, "jane.smith@example.com")
        send(customer, "I want to talk to a human")
        escalated = customer.get_by_test_id("agent-message").last
        escalated.get_by_test_id("status-badge").wait_for(timeout=WAIT_MS)
        assert escalated.get_by_test_id("status-badge").inner_text().lower() == "escalated"
        session = customer.evaluate("localStorage.getItem('supportmesh.session')")

        console.get_by_test_id("console-token").fill(mint_agent_token(mesh.auth_secret, "Alice", 3600))
        console.get_by_test_id("console-sign-in-button").click()
        item = console.locator(f'[data-testid="queue-item"][data-session="{session}"]')
        item.wait_for(timeout=WAIT_MS)

        # The customer writes while a person has the conversation: it goes to the queue, shown as text.
        send(customer, HOSTILE)
        customer.locator('[data-testid="status-badge"]:text("with_agent")').wait_for(timeout=WAIT_MS)
        item.click()
        console.get_by_test_id("console-message").filter(has_text=HOSTILE).wait_for(timeout=WAIT_MS)
        assert console.locator("#conversation img").count() == 0
        assert console.get_by_test_id("console-timeline").inner_text().count("escalated") >= 1

        console.get_by_test_id("reply-input").fill("Hello Jane, Alice here: I'm looking at it.")
        console.get_by_test_id("reply-button").click()
        human = customer.get_by_test_id("human-message").last
        human.wait_for(timeout=WAIT_MS)  # live: no reload
        assert "Alice here" in human.inner_text() and human.get_by_test_id("agent-name").text_content() == "Alice (support team)"
        console.screenshot(path=str(ARTIFACTS / "console-handover.png"), full_page=True)
        customer.screenshot(path=str(ARTIFACTS / "widget-agent-reply.png"), full_page=True)

        console.get_by_test_id("close-button").click()
        customer.get_by_test_id("handover-closed").wait_for(timeout=WAIT_MS)
        assert customer_dialogs == [] and console_dialogs == []
    finally:
        customer_ctx.close()
        agent_ctx.close()


def test_the_console_refuses_a_customer_token(browser, mesh) -> None:
    context, console, _ = _page(browser, mesh.gateway_url + "/console")
    try:
        console.get_by_test_id("console-token").fill(mesh.token("user@example.com"))
        console.get_by_test_id("console-sign-in-button").click()
        console.get_by_test_id("console-error").wait_for(timeout=WAIT_MS)
        assert "not an agent" in console.get_by_test_id("console-error").inner_text()
        assert console.get_by_test_id("console-sign-in").is_visible()
    finally:
        context.close()
