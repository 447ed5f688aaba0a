"""Chatting with the gateway as a client does: POST /api/chat and, on a 202 (the answer took longer than the
chat deadline, 3 s in the tests' meshes, which a busy machine can exceed), GET /api/chat/{id} until the
outcome. Tests that check an answer must not depend on it arriving within the synchronous deadline."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.support.identity import auth

FOLLOW_S = 60.0  # generous: a saga of a busy mesh, not the chat deadline


def follow(base: str, message_id: str, wait_s: float = FOLLOW_S, *, email: str = "user@example.com") -> httpx.Response:
    """GET /api/chat/{id}, as the signed-in customer `email` (only the owner may read it), while it answers 202
    (still processing), at most `wait_s`; the last response."""
    deadline = time.monotonic() + wait_s
    headers = auth(email)
    outcome = httpx.get(f"{base}/api/chat/{message_id}", timeout=10, headers=headers)
    while outcome.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.3)
        outcome = httpx.get(f"{base}/api/chat/{message_id}", timeout=10, headers=headers)
    return outcome


# Answers given while a saga waits for a person (its final answer follows).
PROVISIONAL = frozenset({"needs_confirmation", "pending_approval"})


def follow_final(base: str, message_id: str, wait_s: float = FOLLOW_S, *,
                 email: str = "user@example.com") -> httpx.Response:
    """GET /api/chat/{id} until the saga's final answer (not 202, not a provisional answer), at most `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        outcome = follow(base, message_id, max(0.0, deadline - time.monotonic()), email=email)
        if outcome.status_code != 200 or outcome.json()["status"] not in PROVISIONAL or time.monotonic() > deadline:
            return outcome
        time.sleep(0.3)


def chat(base: str, message: str, *, session: str | None = None, email: str = "user@example.com",
         timeout: float = 30, follow_s: float = FOLLOW_S, confirm: bool = True) -> httpx.Response:
    """Send a chat message as the signed-in customer `email`; a 202 is followed to the outcome. Returns the last
    response (200 with the answer). With `confirm`, an answer asking "shall I go ahead?" is answered "yes" in the
    same session, and the result is the saga's final answer (what a customer who wants the action sees)."""
    session = session or uuid.uuid4().hex
    r = httpx.post(f"{base}/api/chat", json={"session_id": session, "message": message}, timeout=timeout,
                   headers=auth(email))
    r = follow(base, r.json()["message_id"], follow_s, email=email) if r.status_code == 202 else r
    if confirm and r.status_code == 200 and r.json()["status"] == "needs_confirmation":
        return reply(base, "yes", session=session, email=email, timeout=timeout, follow_s=follow_s)
    return r


def reply(base: str, message: str, *, session: str, email: str = "user@example.com", timeout: float = 30,
          follow_s: float = FOLLOW_S) -> httpx.Response:
    """Answer a pending question in `session`: the response is the waiting saga's final answer (followed)."""
    r = httpx.post(f"{base}/api/chat", json={"session_id": session, "message": message}, timeout=timeout,
                   headers=auth(email))
    if r.status_code == 202 or (r.status_code == 200 and r.json()["status"] in PROVISIONAL):
        return follow_final(base, r.json()["message_id"], follow_s, email=email)
    return r


def answer(base: str, message: str, **kwargs: object) -> dict:
    """The answer to a chat message (following a 202), asserting there is one. Without one, the assertion
    shows the saga's recorded events, so a failure on a slow machine says where the saga stood."""
    r = chat(base, message, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200, (message, r.status_code, r.text, saga_timeline(base, r, kwargs.get("email")))
    return r.json()


def saga_timeline(base: str, response: httpx.Response, email: object = None) -> list[str]:
    """`+seconds actor kind` for each event the saga log holds for the message of `response` (for failure
    messages only: a test asserts on the answer, not on this)."""
    try:
        message_id = response.json()["message_id"]
        events = httpx.get(f"{base}/api/sagas/{message_id}", timeout=10,
                           headers=auth(str(email or "user@example.com"))).json()["events"]
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the assertion it explains
        return [f"no saga timeline: {exc!r}"]
    start = events[0]["ts"] if events else 0.0
    return [f"+{e['ts'] - start:.2f}s {e.get('actor')} {e['kind']} (attempt {e.get('attempt')})" for e in events]
