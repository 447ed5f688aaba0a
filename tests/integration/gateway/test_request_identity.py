"""A request's bearer token is verified once, although the rate limiter (which counts a chat against the
signed-in customer) and the route (which acts for them) both ask who is calling."""

from __future__ import annotations

import pytest

import gateway.auth
from tests.support.identity import auth

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    verify = gateway.auth.verify_identity

    def counting(secret: str, token: str, **kwargs: object) -> object:
        seen.append(token)
        return verify(secret, token, **kwargs)

    monkeypatch.setattr(gateway.auth, "verify_identity", counting)
    return seen


async def test_a_chat_message_verifies_its_token_once(gateway, verifications) -> None:
    _, client = gateway
    answer = await client.post("/api/chat", json={"session_id": "s-verify-once", "message": "Where is order 12345?"},
                               headers=ASYNC)
    assert answer.status_code == 202, answer.text
    assert len(verifications) == 1


async def test_a_refused_token_stays_refused_and_each_request_has_its_own_caller(gateway) -> None:
    _, client = gateway
    # The rate limiter reads a refused token as "no customer"; the route must still refuse it.
    forged = await client.post("/api/chat", json={"session_id": "s-verify-bad", "message": "hi"},
                               headers={**ASYNC, **auth("mallory@example.com", secret="not-the-secret")})
    assert forged.status_code == 401, forged.text
    other = await client.post("/api/chat", json={"session_id": "s-verify-other", "message": "hi"},
                              headers={**ASYNC, **auth("other@example.com")})
    assert other.status_code == 202, other.text
    # The next request is its own caller's (user@example.com), not the previous request's.
    mine = await client.post("/api/chat", json={"session_id": "s-verify-other", "message": "hi"}, headers=ASYNC)
    assert mine.status_code == 403, mine.text
