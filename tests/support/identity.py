"""Customer tokens for tests: the secret every test mesh and in-process gateway verifies with (one per test
process, random), and the `Authorization` header of a signed-in customer."""

from __future__ import annotations

import secrets

from gateway.auth import mint_token

TEST_SECRET = secrets.token_urlsafe(48)
# Long enough for the slowest test session (machines differ).
TOKEN_TTL_S = 4 * 3600


def token(email: str = "user@example.com", *, secret: str = TEST_SECRET, ttl_s: float = TOKEN_TTL_S) -> str:
    """A token proving `email`."""
    return mint_token(secret, email, ttl_s)


def auth(email: str = "user@example.com", *, secret: str = TEST_SECRET) -> dict[str, str]:
    """The `Authorization` header of the signed-in customer `email`."""
    return {"Authorization": f"Bearer {token(email, secret=secret)}"}


AUTH = auth()
