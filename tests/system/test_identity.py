"""Who the customer is and what they may see, against the whole local mesh (`supportmesh up`): tokens, guests,
ownership of every read, sessions, the demo sign-in picker, security headers; and the secret `supportmesh up`
keeps, and `supportmesh token`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid

import httpx
import jwt
import pytest

from gateway.auth import SESSION_HEADER, verify_token

from tests.support.identity import token

pytestmark = pytest.mark.e2e


def post_chat(mesh, message: str, *, headers: dict[str, str] | None = None, session: str | None = None,
              email: str | None = None, timeout: float = 30) -> httpx.Response:
    body: dict[str, str] = {"session_id": session or uuid.uuid4().hex, "message": message}
    if email:
        body["customer_email"] = email
    return httpx.post(f"{mesh.gateway_url}/api/chat", json=body, headers=headers or {}, timeout=timeout)


def answered(mesh, r: httpx.Response, headers: dict[str, str], wait_s: float = 60) -> dict:
    """The final answer of a chat (following a 202 with the same credentials)."""
    deadline = time.monotonic() + wait_s
    while r.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.3)
        r = httpx.get(f"{mesh.gateway_url}/api/chat/{r.json()['message_id']}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def guest_session(mesh) -> str:
    r = httpx.post(f"{mesh.gateway_url}/api/sessions", timeout=10)
    assert r.status_code == 201 and r.json()["signed_in"] is False, r.text
    return r.json()["session_id"]


# ---- tokens ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bearer,reason", [
    (lambda mesh: token(secret="not-the-mesh-secret-" + "x" * 32), "signature"),
    (lambda mesh: jwt.encode({"sub": "user@example.com", "exp": int(time.time()) - 600}, mesh.auth_secret,
                             algorithm="HS256"), "expired"),
    (lambda mesh: jwt.encode({"sub": "user@example.com"}, mesh.auth_secret, algorithm="HS256"), "exp"),
    (lambda mesh: "not.a.jwt", "malformed"),
    # The "none" algorithm, and a token signed with another algorithm than the one pinned.
    (lambda mesh: jwt.encode({"sub": "user@example.com", "exp": int(time.time()) + 600}, None, algorithm="none"),
     "invalid"),
    (lambda mesh: jwt.encode({"sub": "user@example.com", "exp": int(time.time()) + 600}, mesh.auth_secret,
                             algorithm="HS512"), "invalid"),
])
def test_a_token_that_proves_nothing_gets_401(mesh, bearer, reason: str) -> None:
    headers = {"Authorization": f"Bearer {bearer(mesh)}"}
    for r in (post_chat(mesh, "I want a refund for order 44444", headers=headers),
              httpx.get(f"{mesh.gateway_url}/api/chat/{'f' * 32}", headers=headers, timeout=10)):
        assert r.status_code == 401, r.text
        assert reason in r.json()["detail"], r.json()
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(f"{mesh.gateway_url}/api/sessions", headers={"Authorization": "Basic dXNlcjpwdw=="}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_a_token_naming_another_customers_email_is_refused(mesh) -> None:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    r = post_chat(mesh, "refund $50 on order 67890", headers=mesh.auth("user@example.com"),
                  email="jane.smith@example.com")
    assert r.status_code == 403 and "does not match" in r.json()["detail"], r.text
    assert httpx.get(f"{mesh.mocks_url}/orders/67890/actions", timeout=10).json()["actions"] == []
    # The body's email may be omitted, or repeat the token's (in any case).
    r = post_chat(mesh, "hello", headers=mesh.auth("jane.smith@example.com"), email="Jane.Smith@example.com")
    assert r.status_code in (200, 202), r.text


# ---- guests ----------------------------------------------------------------------------------------------


def test_a_guest_never_causes_a_side_effect(mesh) -> None:
    httpx.post(f"{mesh.mocks_url}/_admin/reset", timeout=10).raise_for_status()
    session = guest_session(mesh)
    guest = {SESSION_HEADER: session}
    # The order's real number and the email it was placed with: still no refund, the reply says to sign in.
    r = post_chat(mesh, "I want a refund of $10 for order 44444", session=session, email="user@example.com")
    body = answered(mesh, r, guest)
    assert body["action_plan"]["approved"] is False, body
    assert "sign in" in body["response"].lower(), body["response"]
    assert body["execution_result"] is None
    assert httpx.get(f"{mesh.mocks_url}/orders/44444/actions", timeout=10).json()["actions"] == []
    saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{body['message_id']}", headers=guest, timeout=10).json()
    assert "execution_coordinator" not in [e["actor"] for e in saga["events"]]


def test_a_guest_gets_the_proven_orders_status_and_nothing_else(mesh) -> None:
    session = guest_session(mesh)
    guest = {SESSION_HEADER: session}
    r = post_chat(mesh, "Where is my order 12345?", session=session, email="user@example.com")
    body = answered(mesh, r, guest)
    assert "12345" in body["response"] and "Distribution Center" in body["response"], body["response"]
    saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{body['message_id']}", headers=guest, timeout=10).json()
    context = next(e["data"]["enrichment"]["context"] for e in saga["events"]
                   if e["kind"] == "step_completed" and e["actor"] == "context_retriever")
    assert context["customer"] is None and context["orders"] == []  # no profile, no other order
    assert context["order"]["order_id"] == "12345"
    everything = json.dumps(saga) + json.dumps(body)
    for other in ("John", "cust_001", "55555", "44444", "33333", "premium"):
        assert other not in everything, other
    history = httpx.get(f"{mesh.gateway_url}/api/sessions/{session}/history", timeout=10).json()["messages"]
    assert "John" not in json.dumps(history) and "55555" not in json.dumps(history)

    # Jane's order with John's email (or no email): nothing about it.
    for email in ("user@example.com", None):
        r = post_chat(mesh, "Where is my order 67890?", session=session, email=email)
        body = answered(mesh, r, guest)
        saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{body['message_id']}", headers=guest, timeout=10).json()
        everything = json.dumps(saga) + json.dumps(body)
        assert "Jane" not in everything and "Smart Watch" not in everything and "delivered" not in body["response"]


# ---- ownership of every read ---------------------------------------------------------------------------------


def test_another_customers_saga_chat_events_and_history_are_404(mesh) -> None:
    session = uuid.uuid4().hex
    john, jane = mesh.auth("user@example.com"), mesh.auth("jane.smith@example.com")
    body = answered(mesh, post_chat(mesh, "Where is my order 12345?", headers=john, session=session), john)
    mid = body["message_id"]
    reads = [f"/api/chat/{mid}", f"/api/chat/{mid}/events", f"/api/sagas/{mid}", f"/api/sessions/{session}/history"]
    for path in reads:
        assert httpx.get(f"{mesh.gateway_url}{path}", headers=john, timeout=30).status_code == 200, path
        for stranger in (jane, {}, {SESSION_HEADER: session}):  # another customer; a guest, even with the id
            r = httpx.get(f"{mesh.gateway_url}{path}", headers=stranger, timeout=10)
            assert r.status_code == 404, (path, stranger.keys(), r.text)
    # A guest's saga: only with the session id that started it.
    guest = guest_session(mesh)
    body = answered(mesh, post_chat(mesh, "hello", session=guest), {SESSION_HEADER: guest})
    for path in (f"/api/chat/{body['message_id']}", f"/api/sagas/{body['message_id']}"):
        assert httpx.get(f"{mesh.gateway_url}{path}", headers={SESSION_HEADER: guest}, timeout=10).status_code == 200
        for stranger in ({}, john, {SESSION_HEADER: guest_session(mesh)}):
            assert httpx.get(f"{mesh.gateway_url}{path}", headers=stranger, timeout=10).status_code == 404, path


def test_someone_elses_session_id_is_refused(mesh) -> None:
    john, jane = mesh.auth("user@example.com"), mesh.auth("jane.smith@example.com")
    r = httpx.post(f"{mesh.gateway_url}/api/sessions", headers=john, timeout=10)
    assert r.status_code == 201 and r.json()["signed_in"] is True
    session = r.json()["session_id"]
    assert len(session) >= 32 and session != httpx.post(f"{mesh.gateway_url}/api/sessions", timeout=10).json()[
        "session_id"]
    assert post_chat(mesh, "hello", headers=john, session=session).status_code in (200, 202)
    for stranger, email in ((jane, None), ({}, "user@example.com")):
        r = post_chat(mesh, "refund order 44444", headers=stranger, session=session, email=email)
        assert r.status_code == 403 and "belongs to someone else" in r.json()["detail"], r.text
    # A session a client proposes is the proposer's from then on.
    proposed = f"proposed-{uuid.uuid4().hex}"
    assert post_chat(mesh, "hello", headers=jane, session=proposed).status_code in (200, 202)
    assert post_chat(mesh, "hello", headers=john, session=proposed).status_code == 403


# ---- the demo sign-in picker, headers, docs ----------------------------------------------------------------------


def test_demo_sign_in_mints_a_token_for_seeded_customers_only(mesh) -> None:
    customers = httpx.get(f"{mesh.gateway_url}/api/demo/customers", timeout=10).json()["customers"]
    assert {"email": "jane.smith@example.com", "name": "Jane Smith"} in customers
    r = httpx.post(f"{mesh.gateway_url}/api/demo/sign-in", json={"email": "jane.smith@example.com"}, timeout=10)
    assert r.status_code == 200
    assert verify_token(mesh.auth_secret, r.json()["token"]) == "jane.smith@example.com"
    r = httpx.post(f"{mesh.gateway_url}/api/demo/sign-in", json={"email": "mallory@example.com"}, timeout=10)
    assert r.status_code == 404


def test_demo_sign_in_and_docs_are_absent_unless_turned_on() -> None:
    from gateway.app import create_app
    from supportmesh.config import Settings

    async def status(settings: Settings, method: str, path: str, **kw) -> int:
        transport = httpx.ASGITransport(app=create_app(settings))  # no lifespan: these routes need no store
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (await client.request(method, path, **kw)).status_code

    import asyncio

    off = Settings(auth_secret="s" * 48)  # the defaults (the Kubernetes base sets neither)
    on = off.model_copy(update={"demo_sign_in": True, "api_docs": True})
    for settings, expected in ((off, 404), (on, 200)):
        assert asyncio.run(status(settings, "POST", "/api/demo/sign-in", json={"email": "user@example.com"})) == expected
        assert asyncio.run(status(settings, "GET", "/api/demo/customers")) == expected
        assert asyncio.run(status(settings, "GET", "/docs")) == expected
        assert asyncio.run(status(settings, "GET", "/openapi.json")) == expected


@pytest.mark.parametrize("path", ["/", "/widget.html", "/saga.html", "/api/config"])
def test_security_headers(mesh, path: str) -> None:
    r = httpx.get(f"{mesh.gateway_url}{path}", timeout=10)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"


# ---- the secret of `supportmesh up`, and `supportmesh token` ----------------------------------------------------


def test_up_keeps_its_secret_0600_and_reuses_it(tmp_path, monkeypatch) -> None:
    from supportmesh.up import LocalMesh

    monkeypatch.delenv("SUPPORTMESH_AUTH_SECRET", raising=False)
    first = LocalMesh(tmp_path / "data").auth_secret
    path = tmp_path / "data" / "secrets" / "auth-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first) >= 32 and path.read_text().strip() == first
    assert LocalMesh(tmp_path / "data").auth_secret == first  # the next start reuses it
    assert LocalMesh(tmp_path / "other").auth_secret != first
    monkeypatch.setenv("SUPPORTMESH_AUTH_SECRET", "from-the-environment-" + "x" * 32)
    assert LocalMesh(tmp_path / "data").auth_secret == "from-the-environment-" + "x" * 32


def test_token_command_prints_a_token_that_verifies(tmp_path, mesh) -> None:
    from gateway.auth import load_or_create_secret

    secret = load_or_create_secret(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SUPPORTMESH_AUTH_SECRET"}
    out = subprocess.run([sys.executable, "-m", "supportmesh.cli", "token", "Jane.Smith@example.com", "--data-dir",
                          str(tmp_path), "--ttl", "120"], env=env, capture_output=True, text=True, check=True)
    printed = out.stdout.strip()
    assert verify_token(secret, printed) == "jane.smith@example.com"
    claims = jwt.decode(printed, secret, algorithms=["HS256"])
    assert 100 <= claims["exp"] - time.time() <= 125
    # With the mesh's secret in the environment, the mesh accepts it.
    out = subprocess.run([sys.executable, "-m", "supportmesh.cli", "token", "jane.smith@example.com"],
                         env={**env, "SUPPORTMESH_AUTH_SECRET": mesh.auth_secret}, capture_output=True, text=True,
                         check=True)
    r = httpx.post(f"{mesh.gateway_url}/api/sessions", headers={"Authorization": f"Bearer {out.stdout.strip()}"},
                   timeout=10)
    assert r.status_code == 201 and r.json()["signed_in"] is True
    # No secret anywhere: a clear error, no token.
    out = subprocess.run([sys.executable, "-m", "supportmesh.cli", "token", "a@example.com", "--data-dir",
                          str(tmp_path / "none")], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and not out.stdout and "SUPPORTMESH_AUTH_SECRET" in out.stderr
