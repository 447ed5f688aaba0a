"""`supportmesh token --agent NAME` and what the gateway makes of agent tokens: a support agent's token proves an
agent (role "agent", sub = the name), never a customer."""

from __future__ import annotations

import jwt
import pytest

from gateway.auth import AuthError, mint_agent_token, mint_token, verify_identity, verify_token
from supportmesh import token as token_cli

SECRET = "s" * 48


def test_the_cli_prints_an_agent_token(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SUPPORTMESH_AUTH_SECRET", SECRET)
    assert token_cli.main(["--agent", "Alice", "--ttl", "60"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "Alice" and claims["role"] == "agent" and claims["exp"] - claims["iat"] == 60


def test_the_cli_wants_an_email_or_an_agent(monkeypatch) -> None:
    monkeypatch.setenv("SUPPORTMESH_AUTH_SECRET", SECRET)
    for argv in ([], ["user@example.com", "--agent", "Alice"], ["--agent", "<script>"]):
        with pytest.raises(SystemExit):
            token_cli.main(argv)


def test_an_agent_token_proves_an_agent_and_no_customer() -> None:
    agent = mint_agent_token(SECRET, "Alice", 60)
    assert verify_identity(SECRET, agent).role == "agent"
    with pytest.raises(AuthError):
        verify_token(SECRET, agent)
    customer = verify_identity(SECRET, mint_token(SECRET, "User@Example.com", 60))
    assert (customer.sub, customer.role) == ("user@example.com", "customer")


def test_a_token_with_another_role_or_a_bad_agent_name_proves_nothing() -> None:
    for claims in ({"sub": "user@example.com", "role": "admin"}, {"sub": "<img>", "role": "agent"}):
        forged = jwt.encode({**claims, "exp": 2**31}, SECRET, algorithm="HS256")
        with pytest.raises(AuthError):
            verify_identity(SECRET, forged)
