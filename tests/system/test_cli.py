"""`supportmesh chat` against the running mesh: it follows a slow answer for a bounded time, then stops with a
clear message and the message id (never polls forever)."""

from __future__ import annotations

import time

import httpx
import pytest

from supportmesh.chat import EXIT_STILL_PROCESSING, main

pytestmark = pytest.mark.e2e


def test_chat_follows_a_slow_answer_past_the_deadline(mesh, capsys) -> None:
    faults = {"GET /customers/{email}": {"latency_ms": 3500}}  # longer than the gateway's 3 s deadline
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    try:
        code = main(["--gateway", mesh.gateway_url, "--token", mesh.token(), "--wait", "60", "My order 12345 is late!"])
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("[resolved]") and "Distribution Center" in out


def test_chat_gives_up_after_wait_with_the_message_id(mesh, capsys) -> None:
    faults = {"GET /customers/{email}": {"latency_ms": 3500}}
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    try:
        started = time.monotonic()
        code = main(["--gateway", mesh.gateway_url, "--token", mesh.token(), "--wait", "0.2",
                     "Where is my order 12345?"])
        took = time.monotonic() - started
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()
    err = capsys.readouterr().err
    assert code == EXIT_STILL_PROCESSING, err
    assert "no answer after 0.2s" in err
    message_id = err.split("message ", 1)[1].split()[0]
    assert f"/api/chat/{message_id}" in err and f"saga.html?id={message_id}" in err
    assert took < 30  # the 3 s deadline plus a short follow-up, not the saga's whole run
    # The id it printed is the real one: the answer is there once the saga ends.
    deadline = time.monotonic() + 30
    r = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10, headers=mesh.auth())
    while r.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.3)
        r = httpx.get(f"{mesh.gateway_url}/api/chat/{message_id}", timeout=10, headers=mesh.auth())
    assert r.status_code == 200


def test_chat_says_when_the_gateway_is_unreachable(capsys) -> None:
    code = main(["--gateway", "http://127.0.0.1:9", "hello"])
    assert code == 2 and "cannot reach the gateway" in capsys.readouterr().err
