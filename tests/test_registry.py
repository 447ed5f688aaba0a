"""The actor registry: the routes follow it, `python -m actors` resolves names through it, and a tenth actor (one
file, tests/toy_tenth_actor.py, plus one registry line, tests/toy_registry.py) runs in a real mesh: `supportmesh
up` starts it, the chat route goes through it, and its metrics exist, with no change to the runtime."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from chat_client import answer
from mesh_fixture import Mesh
from toy_tenth_actor import LengthTagger

from actors import registry
from actors.__main__ import load_actor
from actors.drain import STEP_FINISH_S, step_drain_s
from actors.registry import ACTION, CHAT, ESCALATION, route
from config.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
TOY_REGISTRY = "toy_registry:ACTORS"
HAPPY = ["sentiment_analyzer", "intent_analyzer", "context_retriever", "decision_router", "response_generator",
         "guardrail_validator"]


@pytest.fixture
def toy_registry(monkeypatch):
    """This process uses the toy registry (the settings are read again, before and after)."""
    monkeypatch.setenv("SUPPORTMESH_ACTOR_REGISTRY", TOY_REGISTRY)
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("SUPPORTMESH_ACTOR_REGISTRY")
    get_settings.cache_clear()


def test_the_routes_follow_the_registry() -> None:
    assert route(CHAT) == (*HAPPY, "response_aggregator")
    assert route(ACTION) == (*HAPPY, "execution_coordinator", "response_aggregator")
    assert route(ESCALATION) == ("escalation_router", "response_aggregator")
    # What the decision router puts after itself when it approves an action.
    assert route(ACTION, after="decision_router") == ("response_generator", "guardrail_validator",
                                                      "execution_coordinator", "response_aggregator")


def test_a_registry_named_in_the_environment_adds_an_actor(toy_registry) -> None:
    assert registry.names()[-2:] == ("length_tagger", "response_aggregator")
    assert route(CHAT) == (*HAPPY, "length_tagger", "response_aggregator")
    assert "length_tagger" not in route(ACTION)  # only the routes its line names
    assert load_actor("length_tagger") is LengthTagger
    assert step_drain_s("length_tagger", Settings()) == STEP_FINISH_S  # no LLM call declared


def test_an_unregistered_actor_name_is_refused_with_the_registered_ones() -> None:
    with pytest.raises(SystemExit, match="unknown actor 'length_tagger'.*sentiment_analyzer"):
        load_actor("length_tagger")


def metric(url: str, name: str, actor: str, extra: str = "") -> float | None:
    """The value of a series `name{actor="<actor>"<extra>}` on a /metrics page (None when it is absent)."""
    text = httpx.get(url, timeout=5).text
    m = re.search(rf'^{name}{{actor="{actor}"{extra}}} (\S+)$', text, flags=re.MULTILINE)
    return float(m.group(1)) if m else None


@pytest.mark.e2e
@pytest.mark.integration
def test_a_tenth_actor_from_one_file_and_one_registry_line_runs_in_a_real_mesh(tmp_path) -> None:
    env = {"SUPPORTMESH_ACTOR_REGISTRY": TOY_REGISTRY, "SUPPORTMESH_CHAT_DEADLINE_S": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}  # where the toy modules are
    mesh = Mesh(tmp_path / "mesh", env=env).start()
    try:
        processes = mesh.endpoints["processes"]
        assert processes["length_tagger-1"]["kind"] == "actor"  # `supportmesh up` started it

        body = answer(mesh.gateway_url, "My order 12345 is late!")
        assert body["status"] == "resolved"
        saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{body['message_id']}", headers=mesh.auth(), timeout=10)
        steps = [e["actor"] for e in saga.json()["events"] if e["kind"] == "step_completed"]
        assert steps == [*HAPPY, "length_tagger", "response_aggregator"]  # the gateway's route includes it

        # Its own metrics, and recovery's zero-filled series for it in the escalation router.
        own = processes["length_tagger-1"]["metrics_url"]
        deadline = time.monotonic() + 30
        while metric(own, "supportmesh_actor_messages_total", "length_tagger", ',outcome="completed"') != 1.0:
            assert time.monotonic() < deadline, httpx.get(own, timeout=5).text
            time.sleep(0.2)
        assert metric(processes["escalation_router-1"]["metrics_url"], "supportmesh_dead_letters_total",
                      "length_tagger") == 0.0
    finally:
        mesh.stop()
