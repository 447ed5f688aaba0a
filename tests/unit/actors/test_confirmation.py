"""The customer's reply to a pending confirmation: only a clear yes executes; a clear no declines; anything else
lapses the pending action and is answered as a new question."""

from __future__ import annotations

import pytest

from actors.confirmation import classify_reply


@pytest.mark.parametrize("text", ["yes", "Yes!", "YES please", "ok", "Okay.", "sure", "go ahead", "Yes, go ahead",
                                  "yep 👍", "Sí", "please do", "ok thanks", "yes yes", "Confirm"])
def test_a_clear_yes(text: str) -> None:
    assert classify_reply(text) == "yes"


@pytest.mark.parametrize("text", ["no", "No.", "nope", "no thanks", "don't", "Don’t do it", "cancel", "stop",
                                  "never mind", "no no no", "not now"])
def test_a_clear_no(text: str) -> None:
    assert classify_reply(text) == "no"


@pytest.mark.parametrize("text", [
    "yes no", "ok but not now", "yes?", "is it refunded?", "what about order 12346",
    "yes, and please also cancel my other order", "Hi", "thanks", "", "   ", "maybe", "I'm not sure",
    "yes " * 40, "okay " + "a" * 100,
])
def test_anything_else_is_not_an_answer(text: str) -> None:
    assert classify_reply(text) == "other"


def test_long_or_hostile_input_is_not_an_answer() -> None:
    # Its patterns are module-level, so tests/unit/test_regex_timing.py times them on pathological input too.
    for text in (" " * 3000 + "yes", "y" * 100_000, "no " * 50_000, "'" * 100_000, "é" * 50_000):
        assert classify_reply(text) == "other"
