"""`Idempotency-Key` on POST /api/chat: a client's retry (after a timeout, a double click) gets the same saga,
never a second one, and so never a second side effect."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from tests.support.chat_client import follow, reply
from tests.support.identity import AUTH, auth

ASYNC = {"Prefer": "respond-async"}


def body(text: str = "Where is my order 12345?", session: str = "s-idem") -> dict[str, str]:
    return {"session_id": session, "message": text}


async def stream_messages(harness) -> int:  # type: ignore[no-untyped-def]
    return (await harness.js.stream_info(harness.settings.stream_name)).state.messages


async def started(gw, message_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.kind for e in await gw.saga.history(message_id) if e.kind == "saga_started"]


async def test_a_retry_with_the_same_key_is_the_same_saga_started_once(gateway, harness) -> None:
    gw, client = gateway
    key = {"Idempotency-Key": uuid.uuid4().hex, **ASYNC}
    first = await client.post("/api/chat", json=body(), headers=key)
    # The retry comes after JetStream's duplicate window: its Nats-Msg-Id would not stop a second publish.
    info = await harness.js.stream_info(harness.settings.stream_name)
    info.config.duplicate_window = 1.0
    await harness.js.update_stream(info.config)
    window_over = time.monotonic() + 1.5
    while time.monotonic() < window_over:
        await asyncio.sleep(0.1)
    again = await client.post("/api/chat", json=body(), headers=key)

    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["message_id"] == again.json()["message_id"]
    assert await stream_messages(harness) == 1  # the first step was published once
    assert await started(gw, first.json()["message_id"]) == ["saga_started"]
    # Without a key, the same text is a new message (a customer may ask the same thing twice).
    other = await client.post("/api/chat", json=body(), headers=ASYNC)
    assert other.json()["message_id"] != first.json()["message_id"]
    assert gw.replies.waiting == 0


async def test_concurrent_attempts_with_one_key_start_one_saga(gateway, harness) -> None:
    gw, client = gateway
    key = {"Idempotency-Key": uuid.uuid4().hex}
    # No actors run here: without respond-async each attempt waits out the deadline and answers 202.
    answers = await asyncio.gather(*(client.post("/api/chat", json=body(), headers=key) for _ in range(4)))

    assert {r.status_code for r in answers} == {202}, [r.text for r in answers]
    assert len({r.json()["message_id"] for r in answers}) == 1
    assert await stream_messages(harness) == 1
    assert await started(gw, answers[0].json()["message_id"]) == ["saga_started"]
    assert gw.replies.waiting == 0  # every attempt's waiter is gone


async def test_a_key_is_scoped_to_its_customer_and_session_and_to_one_message(gateway) -> None:
    _, client = gateway
    key = uuid.uuid4().hex
    mine = await client.post("/api/chat", json=body(), headers={"Idempotency-Key": key, **ASYNC})
    other_session = await client.post("/api/chat", json=body(session="s-idem-2"),
                                      headers={"Idempotency-Key": key, **ASYNC})
    jane = await client.post("/api/chat", json=body(session="s-idem-jane"),
                             headers={"Idempotency-Key": key, **ASYNC, **auth("jane.smith@example.com")})
    ids = {r.json()["message_id"] for r in (mine, other_session, jane)}
    assert len(ids) == 3, [r.text for r in (mine, other_session, jane)]

    reused = await client.post("/api/chat", json=body("Please cancel order 12345"),
                               headers={"Idempotency-Key": key, **ASYNC})
    assert reused.status_code == 409 and "another message" in reused.json()["detail"]
    bad = await client.post("/api/chat", json=body(), headers={"Idempotency-Key": "no spaces allowed", **ASYNC})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]


@pytest.mark.e2e
@pytest.mark.timeout(400)  # the session mesh may start inside this test
def test_a_refund_sent_twice_with_one_key_refunds_once(mesh) -> None:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()  # order 44444 not yet refunded
    gateways = mesh.endpoints["gateway_urls"]
    session = uuid.uuid4().hex
    headers = {"Idempotency-Key": uuid.uuid4().hex, **AUTH}
    chat = {"session_id": session, "message": "I want a refund for order 44444"}

    async def twice_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateways[0], timeout=60) as client:
            return list(await asyncio.gather(*(client.post("/api/chat", json=chat, headers=headers)
                                               for _ in range(2))))

    first = asyncio.run(twice_at_once())
    ids = {r.json()["message_id"] for r in first}
    assert len(ids) == 1, [r.text for r in first]
    (message_id,) = ids
    asked = follow(mesh.gateway_url, message_id)
    assert asked.status_code == 200 and asked.json()["status"] == "needs_confirmation", asked.text
    # A retry while the saga waits for the yes is the same message, not the answer to its question.
    retried = httpx.post(f"{gateways[-1]}/api/chat", json=chat, headers=headers, timeout=60)
    assert retried.json()["message_id"] == message_id and retried.json()["status"] == "needs_confirmation"
    answer = reply(mesh.gateway_url, "yes", session=session)
    assert answer.status_code == 200 and answer.json()["status"] == "resolved", answer.text
    assert answer.json()["message_id"] == message_id
    # The client retries once more after the answer (its connection dropped): the stored answer, no new saga.
    late = httpx.post(f"{gateways[-1]}/api/chat", json=chat, headers=headers, timeout=60)  # the other gateway
    assert late.status_code == 200 and late.json()["message_id"] == message_id
    assert late.json()["response"] == answer.json()["response"]

    actions = httpx.get(f"{mesh.mocks_url}/orders/44444/actions", timeout=10).json()["actions"]
    refunds = [a for a in actions if a["idempotency_key"].startswith(f"{message_id}:")]
    assert len(refunds) == 1 and refunds[0]["type"] == "refund", actions
    assert len(actions) == 1, actions  # nothing else refunded the order: one saga, one effect
