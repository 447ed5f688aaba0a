"""Ports handed to the mesh's processes are distinct, and a process counts as ready only when it answers for itself.

The bug these guard against: `supportmesh up` gave two actors the same metrics port (the kernel returned one
ephemeral port to two binds in a row). One actor crash-looped on "address in use", the other answered both
readiness checks, the mesh said ready, and the first chat stalled at the crash-looping actor for a minute.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from observability.metrics_server import start_metrics_server
from supportmesh import natsserver
from supportmesh.supervisor import Child
from supportmesh.up import _serves


class _SameEphemeralPort:
    """A socket whose bind to port 0 gets the ports of `ports` in turn, as a kernel may (repeating one)."""

    ports = iter(())

    def __init__(self, *args: Any) -> None:
        self._port = 0

    def __enter__(self) -> _SameEphemeralPort:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self._port = next(self.ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self._port)


def test_free_port_never_hands_out_the_same_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    _SameEphemeralPort.ports = iter([40001, 40001, 40001, 40002])
    monkeypatch.setattr(natsserver.socket, "socket", _SameEphemeralPort)
    monkeypatch.setattr(natsserver, "_HANDED_OUT", set())

    assert natsserver.free_port() == 40001
    assert natsserver.free_port() == 40002  # the repeats of 40001 were skipped


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = [natsserver.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def _child(kind: str, actor: str | None = None) -> Child:
    return Child(name=f"{actor or kind}-1", kind=kind, argv=[], env={}, log_path=Path("/dev/null"), actor=actor)


def test_a_port_answered_by_another_process_is_not_ready() -> None:
    intent = _child("actor", "intent_analyzer")
    assert _serves(httpx.Response(200, json={"status": "ready", "service": "intent_analyzer"}), intent)
    assert not _serves(httpx.Response(200, json={"status": "ready", "service": "context_retriever"}), intent)
    assert not _serves(httpx.Response(200, json={"status": "ready"}), intent)
    assert not _serves(httpx.Response(503, json={"status": "not ready", "service": "intent_analyzer"}), intent)
    assert _serves(httpx.Response(200, json={"status": "ok", "service": "gateway"}), _child("gateway"))


def test_the_actors_health_endpoints_name_the_actor() -> None:
    state = {"ready": False}
    port = start_metrics_server(0, ready=lambda: state["ready"], service="intent_analyzer")
    base = f"http://127.0.0.1:{port}"

    not_ready = httpx.get(f"{base}/readyz")
    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "not ready", "service": "intent_analyzer"})
    state["ready"] = True
    assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "service": "intent_analyzer"}
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "service": "intent_analyzer"}
