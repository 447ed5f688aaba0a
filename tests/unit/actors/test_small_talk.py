"""Small talk and asking for a person, by the local model's rules: "Hi", "thanks!" and "ok" are conversation
(answered in kind, never escalated), a message with a request in it is not small talk, and "talk to a human"
is its own intent, which the decision router hands to a person."""

from __future__ import annotations

import pytest

from actors.decision_router import DecisionRouter
from actors.domain import Intent, Sentiment, new_message
from actors.local_model import analyze_intent, compose_response, small_talk_kind

SMALL_TALK = {
    "Hi": "greeting", "hello": "greeting", "Hey there!": "greeting", "Good morning": "greeting",
    "thanks!": "thanks", "Thank you": "thanks", "thank you so much!!": "thanks", "Cheers": "thanks",
    "ok": "acknowledgement", "OK.": "acknowledgement", "okay thanks": "acknowledgement", "got it": "acknowledgement",
    "bye": "goodbye", "Goodbye!": "goodbye", "see you": "goodbye",
}
NOT_SMALL_TALK = ["Hello, can you help me?", "Thanks, that is all!", "ok so where is order 12345",
                  "hi, I want a refund for order 12345", "thanks for nothing, this is fraud", "okay " * 20,
                  "I want to talk to a human"]


@pytest.mark.parametrize("text,kind", SMALL_TALK.items())
def test_short_social_messages_are_small_talk(text: str, kind: str) -> None:
    assert small_talk_kind(text) == kind
    found = analyze_intent(text)
    assert found["intent"] == "small_talk" and found["confidence"] >= 0.9


@pytest.mark.parametrize("text", NOT_SMALL_TALK)
def test_messages_with_more_in_them_are_not_small_talk(text: str) -> None:
    assert small_talk_kind(text) is None
    assert analyze_intent(text)["intent"] != "small_talk"


def test_small_talk_is_answered_in_kind_signed_in_or_not() -> None:
    for signed_in in (True, False):
        data = {"intent": {"name": "small_talk"}, "signed_in": signed_in}
        assert "welcome" in compose_response({**data, "customer_message": "thanks!"})
        assert compose_response({**data, "customer_message": "Hi"}).startswith("Hello!")
        assert "Goodbye" in compose_response({**data, "customer_message": "bye"})
        assert "anything else" in compose_response({**data, "customer_message": "ok"})


@pytest.mark.parametrize("text", ["I want to talk to a human", "Can I speak with a real person?",
                                  "let me chat to an agent please"])
def test_asking_for_a_person_is_its_own_intent(text: str) -> None:
    assert analyze_intent(text)["intent"] == "human_request"


def _routed(intent: str, fake_ctx: object) -> object:
    import asyncio

    message = new_message(session_id="s1", customer_email="user@example.com", customer_message="x",
                          customer_verified=True)
    message = message.enriched({
        "sentiment": Sentiment(label="NEUTRAL", score=0.0, confidence=0.9, urgency="low"),
        "intent": Intent(name=intent, confidence=0.95)})
    router = DecisionRouter()
    router.min_confidence = 0.6
    return asyncio.run(router.handle(message, fake_ctx))  # type: ignore[arg-type]


def test_decision_router_answers_small_talk_and_escalates_a_request_for_a_person(fake_ctx) -> None:
    small = _routed("small_talk", fake_ctx)
    assert small.remaining_route is None and small.enrichment["action_plan"].action == "none"
    human = _routed("human_request", fake_ctx)
    assert human.remaining_route and human.remaining_route[0] == "escalation_router"
    assert human.reason == "human_request"
