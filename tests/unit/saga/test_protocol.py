"""The message protocol and the route helpers, as pure logic: strict wire parsing, valid routes only, and
route rewrites that never touch the steps already taken."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from actors.domain import HAPPY_PATH, Message, new_message
from saga.log import SagaEvent
from saga.protocol import MAX_STEPS, Route, RouteError
from saga.replay import FAILED_DETOUR, apply_step, replay


def wire(**changes: object) -> dict:
    """A valid message as it travels, as a dict to tamper with."""
    doc = orjson.loads(new_message(session_id="s-1", customer_email="user@example.com",
                                   customer_message="Where is my order?").to_bytes())
    for path, value in changes.items():
        target = doc
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return doc


def test_a_message_survives_the_wire_unchanged() -> None:
    message = new_message(session_id="s-1", customer_email="user@example.com", customer_message="hi",
                          reply_subject="supportmesh.reply.gw1", deadline_s=10)
    message = message.enriched({"api_data": {"orders": [1, 2]}})
    assert Message.from_bytes(message.to_bytes()) == message


@pytest.mark.parametrize("changes", [
    {"route__current_step": "0"},                 # a number sent as a string
    {"route__current_step": 1.5},
    {"route__current_step": -1},
    {"metadata__created_at": "1700000000"},
    {"metadata__redeliveries": "2"},
    {"metadata__redeliveries": True},             # a bool is not a number
    {"route__error_handler": "bad subject.>"},    # would become a publish subject
    {"route__error_handler": "escalation_router.>"},
    {"route__error_handler": ""},
    {"route__steps": ["sentiment_analyzer", "Intent Analyzer"]},
    {"route__steps": []},
    {"route__steps": ["a"] * (MAX_STEPS + 1)},
    {"message_id": "has.dots"},
    {"session_id": "x" * 65},
    {"payload__customer_message": ""},
    {"payload__unknown": 1},
])
def test_bad_fields_are_refused_at_the_edge(changes: dict) -> None:
    with pytest.raises(ValidationError):
        Message.from_bytes(orjson.dumps(wire(**changes)))


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b'{"message_id": "m"}', b"\xff\xfe"])
def test_non_messages_are_refused_with_a_value_error(data: bytes) -> None:
    # The runtime terminates anything that raises here as poison; it must never be something else.
    with pytest.raises(ValueError):
        Message.from_bytes(data)


def test_the_error_handler_must_be_an_actor_name() -> None:
    with pytest.raises(ValidationError):
        Route(steps=["a"], error_handler="x y")
    assert Route(steps=["a"], error_handler="catcher").error_handler == "catcher"


def test_advanced_moves_one_step_and_may_reach_the_end() -> None:
    route = Route(steps=["a", "b"], error_handler="h")
    assert route.current == "a" and route.remaining == ["b"] and not route.is_last
    nxt = route.advanced()
    assert nxt.current_step == 1 and nxt.current == "b" and nxt.is_last and route.current_step == 0
    done = nxt.advanced()
    assert done.current_step == 2
    with pytest.raises(RouteError):
        _ = done.current


def test_insert_after_current_keeps_the_rest() -> None:
    route = Route(steps=["a", "b", "c", "d"], current_step=1, error_handler="h")
    new = route.inserted_after_current("x", "y")
    assert new.steps == ["a", "b", "x", "y", "c", "d"]
    assert new.current_step == 1 and new.error_handler == "h"
    route.check_rewrite(new)  # taken steps untouched


def test_replace_remaining_keeps_taken_steps_and_the_current_one() -> None:
    route = Route(steps=list(HAPPY_PATH), current_step=3, error_handler="h")
    new = route.with_remaining(["escalation_router", "response_aggregator"])
    assert new.steps == [*HAPPY_PATH[:4], "escalation_router", "response_aggregator"]
    route.check_rewrite(new)
    assert route.with_remaining([]).steps == list(HAPPY_PATH[:4])  # a router may end the route here


@pytest.mark.parametrize("new", [
    Route(steps=["a", "x", "c"], current_step=1, error_handler="h"),       # a taken step rewritten
    Route(steps=["a", "y", "c"], current_step=1, error_handler="h"),       # the current step rewritten
    Route(steps=["a", "b", "c"], current_step=0, error_handler="h"),       # moved back
    Route(steps=["a"], current_step=0, error_handler="h"),                 # taken steps dropped
])
def test_rewriting_taken_steps_is_a_route_error(new: Route) -> None:
    route = Route(steps=["a", "b", "c"], current_step=1, error_handler="h")
    with pytest.raises(RouteError):
        route.check_rewrite(new)


def test_the_step_cap_is_a_route_error_not_a_validation_error() -> None:
    route = Route(steps=["a"] * 10, current_step=9, error_handler="h")
    assert len(route.with_remaining(["b"] * (MAX_STEPS - 10)).steps) == MAX_STEPS
    with pytest.raises(RouteError) as caught:
        route.with_remaining(["b"] * (MAX_STEPS - 9))
    assert not isinstance(caught.value, ValidationError)
    # The runtime sends a failed step to the error handler with with_remaining([handler]): at the cap that
    # too must be a RouteError (which the runtime catches), never a ValidationError that escapes it.
    full = Route(steps=["a"] * MAX_STEPS, current_step=MAX_STEPS - 1, error_handler="h")
    with pytest.raises(RouteError):
        full.with_remaining(["escalation_router"])


def test_a_router_naming_a_non_actor_is_a_route_error() -> None:
    with pytest.raises(RouteError):
        Route(steps=["a", "b"], error_handler="h").with_remaining(["ecommerce.support.>"])


def test_apply_step_enriches_rewrites_and_advances() -> None:
    message = new_message(session_id="s-1", customer_email="user@example.com", customer_message="refund please",
                          steps=["decision_router", "response_generator"])
    memo = {"enrichment": {"api_data": {"k": 1}}, "remaining_route": ["escalation_router", "response_aggregator"],
            "outcome": "escalated", "reason": "needs_approval"}
    nxt = apply_step(message, memo)
    assert nxt.route.steps == ["decision_router", "escalation_router", "response_aggregator"]
    assert nxt.route.current_step == 1 and nxt.payload.api_data == {"k": 1}
    assert nxt.metadata.outcome == "escalated"
    assert message.route.current_step == 0 and message.payload.api_data == {}  # the input is not changed


def test_enrichments_are_strict_and_never_change_the_customer_input() -> None:
    message = new_message(session_id="s-1", customer_email="user@example.com", customer_message="hi")
    with pytest.raises(ValidationError):
        message.enriched({"sentiment": {"label": "NEGATIVE", "score": "-0.5", "confidence": 1.0, "urgency": "high"}})
    with pytest.raises(ValueError):
        message.enriched({"customer_message": "something else"})
    with pytest.raises(ValidationError):  # not a payload field
        message.enriched({"api_data": {"k": 1}, "nope": 1})
    # Only the changed field is validated, but a refused enrichment leaves the message as it was.
    assert message.payload.api_data == {} and message.payload.sentiment is None


def test_replay_follows_a_failed_sagas_detour_to_its_answer() -> None:
    """The answer of a failed saga is a recorded detour: a sweeper resuming the saga delivers that answer, it
    does not run the failed step again."""
    message = new_message(session_id="s-1", customer_email="user@example.com", customer_message="hi",
                          steps=["flaky"])
    answer = {"response": {"text": "a colleague follows up", "model": "supportmesh-runtime"}}
    history = [
        SagaEvent(message_id=message.message_id, kind="saga_started", actor="gateway", step_index=0,
                  data={"message": message.model_dump(mode="json")}),
        SagaEvent(message_id=message.message_id, kind="saga_failed", actor="flaky", step_index=0, data={}),
        SagaEvent(message_id=message.message_id, kind="route_changed", actor="flaky", step_index=0,
                  data={"from": ["flaky"], "to": ["flaky", "response_aggregator"], "reason": FAILED_DETOUR,
                        "enrichment": answer, "outcome": "failed"}),
    ]
    resumed = replay(history, Message)
    assert resumed is not None and resumed.route.current == "response_aggregator"
    assert resumed.route.current_step == 1 and resumed.metadata.outcome == "failed"
    assert resumed.payload.response is not None and resumed.payload.response.text == "a colleague follows up"
