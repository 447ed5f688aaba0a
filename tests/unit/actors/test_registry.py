"""The actor registry: the routes follow it, `python -m actors` resolves names through it, and a registry named in
the environment adds an actor (tests/system/test_tenth_actor.py runs that one in a real mesh)."""

from __future__ import annotations

import pytest

from actors import registry
from actors.__main__ import load_actor
from actors.drain import STEP_FINISH_S, step_drain_s
from actors.registry import ACTION, CHAT, ESCALATION, route
from config.settings import Settings, get_settings

from tests.support.toy_tenth_actor import LengthTagger

TOY_REGISTRY = "tests.support.toy_registry:ACTORS"
HAPPY = ("sentiment_analyzer", "intent_analyzer", "context_retriever", "decision_router", "response_generator",
         "guardrail_validator")


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
