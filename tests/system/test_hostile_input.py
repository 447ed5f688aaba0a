"""Hostile input: emails that try to smuggle a path into the commerce APIs' URLs, control and bidi-override
characters in messages; refused at the gateway with a reason, escaped by the commerce client in any case."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import aiohttp
import httpx
import pytest
from pydantic import ValidationError

from actors.commerce import CommerceClient
from config.settings import Settings
from supportmesh.natsserver import free_port

from tests.support.chat_client import chat
from tests.support.fakes import make_message

SMUGGLING_EMAILS = [
    "x/../../tickets?@a.bc",
    "x/..%2F..%2Ftickets@a.bc",
    "x%2F..%2F..%2Ftickets@a.bc",
    "user@example.com/orders",
    "a?b=c@example.com",
    "a#frag@example.com",
    "a\\..\\tickets@example.com",
    "a\x00b@example.com",
    "a\u202eb@example.com",
]
BAD_TEXT = ["hello\x00", "refund \x1b[2J order 12345", "order \u202e54321 please", "hi\u2066x\u2069", "a\x85b",
            "zero\u200bwidth", "\ufeffbom"]
GOOD_TEXT = ["two\nlines\tand a tab", "windows\r\nline", "family \U0001F468\u200d\U0001F469\u200d\U0001F467",
             "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "¿Dónde está mi pedido 12345?"]


# ---- the protocol (what every actor validates) ----------------------------------------------------------

@pytest.mark.parametrize("email", SMUGGLING_EMAILS)
def test_the_protocol_refuses_path_characters_in_emails(email: str) -> None:
    with pytest.raises(ValidationError, match="customer_email"):
        make_message("hi", email=email)


@pytest.mark.parametrize("text", BAD_TEXT)
def test_the_protocol_refuses_control_characters_in_messages(text: str) -> None:
    with pytest.raises(ValidationError, match="control character"):
        make_message(text)


@pytest.mark.parametrize("text", GOOD_TEXT)
def test_tabs_line_breaks_and_joiners_are_text(text: str) -> None:
    assert make_message(text).payload.customer_message == text


# ---- the gateway, over HTTP against the whole mesh ----------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("email", SMUGGLING_EMAILS)
def test_path_smuggling_emails_get_422_at_the_gateway(mesh, email: str) -> None:
    r = httpx.post(f"{mesh.gateway_url}/api/chat", timeout=10, json={
        "session_id": uuid.uuid4().hex, "customer_email": email, "message": "Where is my order 12345?"})
    assert r.status_code == 422, r.text
    assert "customer_email" in r.json()["detail"]


@pytest.mark.e2e
@pytest.mark.parametrize("text", BAD_TEXT)
def test_control_characters_in_messages_get_422_at_the_gateway(mesh, text: str) -> None:
    r = httpx.post(f"{mesh.gateway_url}/api/chat", timeout=10, json={
        "session_id": uuid.uuid4().hex, "customer_email": "user@example.com", "message": text})
    assert r.status_code == 422, r.text
    assert "message" in r.json()["detail"] and "control character" in r.json()["detail"]


@pytest.mark.e2e
def test_a_pathological_message_is_answered_quickly_end_to_end(mesh) -> None:
    """3 KB that stalled the intent analyzer for hours before its order-number pattern was fixed."""
    started = time.monotonic()
    r = chat(mesh.gateway_url, "where is my order" + " " * 3000 + "x", timeout=60, follow_s=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("resolved", "escalated") and time.monotonic() - started < 30


# ---- the commerce client, over HTTP against the real mock API server ------------------------------------------

@pytest.fixture(scope="module")
def mocks_url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("mocks") / "mocks.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mocks.server", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def test_a_forged_email_stays_one_path_segment(mocks_url: str) -> None:
    """Even past every validator (a forged bus message), an email is one escaped segment of the customers
    route: 404, never the tickets list of every customer."""
    httpx.post(f"{mocks_url}/tickets", timeout=10, json={"customer_email": "jane.smith@example.com",
                                                         "summary": "private"}).raise_for_status()
    sent: list[bytes] = []

    async def remember(session: object, context: object, params: aiohttp.TraceRequestStartParams) -> None:
        sent.append(params.url.raw_path.encode())

    watch = aiohttp.TraceConfig()
    watch.on_request_start.append(remember)
    api = CommerceClient(Settings(customers_api_url=mocks_url, orders_api_url=mocks_url,
                                  tracking_api_url=mocks_url), trace_configs=[watch])
    try:
        assert await api.customer("x/../../tickets?@a.bc") is None
        assert await api.customer_orders("x/../../tickets?@a.bc") == []
        assert await api.order("../tickets") is None
        assert await api.customer("user@example.com") is not None  # an ordinary email still works
    finally:
        await api.close()
    assert sent[0] == b"/customers/x%2F..%2F..%2Ftickets%3F%40a.bc"
    assert sent[1] == b"/customers/x%2F..%2F..%2Ftickets%3F%40a.bc/orders"
    assert sent[2] == b"/orders/..%2Ftickets"
