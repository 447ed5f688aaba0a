"""Waits for a person in a real browser (headless Chromium, the whole mesh): the customer confirms an action in
the widget, and an agent approves one in the console while the customer's widget, left open, shows the outcome
without a reload. Each checks the orders API for exactly one effect. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import httpx
import pytest

from gateway.auth import mint_agent_token
from tests.support.browser import ARTIFACTS
from tests.system.browser.test_widget_browser import send, sign_in

pytestmark = pytest.mark.e2e

WAIT_MS = 60_000  # generous: machines differ


def _page(browser, url: str):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(url)
    return context, page


def _badge(page, status: str):
    """The latest agent message whose badge says `status`, once it is shown."""
    message = page.locator('[data-testid="agent-message"]', has=page.locator(
        f'[data-testid="status-badge"]:text-is("{status}")')).last
    message.wait_for(timeout=WAIT_MS)
    return message


def _refunds(mesh, order_id: str) -> list[dict]:
    actions = httpx.get(f"{mesh.mocks_url}/orders/{order_id}/actions", timeout=10).json()["actions"]
    return [a for a in actions if a["type"] == "refund"]


def test_the_customer_confirms_a_refund_in_the_widget(browser, mesh) -> None:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    context, customer = _page(browser, mesh.gateway_url + "/")
    try:
        sign_in(customer, "user@example.com")
        send(customer, "Please refund $10 for order 44444")
        asked = _badge(customer, "needs_confirmation")
        assert "Shall I go ahead" in asked.inner_text() and "$10.00" in asked.inner_text()
        assert _refunds(mesh, "44444") == []  # nothing before the yes

        send(customer, "yes")
        done = _badge(customer, "resolved")
        assert "issued a refund of $10.00" in done.inner_text()
        assert len(_refunds(mesh, "44444")) == 1
        customer.screenshot(path=str(ARTIFACTS / "widget-confirmation.png"), full_page=True)
    finally:
        context.close()


def test_an_agent_approves_in_the_console_and_the_open_widget_shows_it(browser, mesh) -> None:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    customer_ctx, customer = _page(browser, mesh.gateway_url + "/")
    agent_ctx, console = _page(browser, mesh.gateway_url + "/console")
    try:
        sign_in(customer, "jane.smith@example.com")
        send(customer, "Please refund order 67890")
        pending = _badge(customer, "pending_approval")
        assert "colleague" in pending.inner_text()
        session = customer.evaluate("localStorage.getItem('supportmesh.session')")

        console.get_by_test_id("console-token").fill(mint_agent_token(mesh.auth_secret, "Alice", 3600))
        console.get_by_test_id("console-sign-in-button").click()
        item = console.locator(f'[data-testid="queue-item"][data-session="{session}"]')
        item.wait_for(timeout=WAIT_MS)
        item.click()
        console.locator('[data-testid="proposed-action"]:has-text("67890")').wait_for(timeout=WAIT_MS)
        console.get_by_test_id("approve-button").click()

        done = _badge(customer, "resolved")  # the widget was left open: no reload
        assert "approved" in done.inner_text() and "67890" in done.inner_text()
        assert len(_refunds(mesh, "67890")) == 1
        console.screenshot(path=str(ARTIFACTS / "console-approval.png"), full_page=True)
        customer.screenshot(path=str(ARTIFACTS / "widget-approved.png"), full_page=True)
    finally:
        customer_ctx.close()
        agent_ctx.close()
