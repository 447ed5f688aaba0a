"""Test doubles behind the real interfaces: a step context for calling handlers directly, and an LLM client
returning scripted answers."""

from __future__ import annotations

import logging
from typing import Any

from actors.domain import Message, new_message
from actors.llm import LLMResult
from config.settings import Settings


class FakeContext:
    """What the runtime gives a handler, recording what the handler does with it."""

    def __init__(self, settings: Settings | None = None, attempt: int = 1) -> None:
        self.actor = "test"
        self.attempt = attempt
        self.settings = settings or Settings()
        self.log = logging.LoggerAdapter(logging.getLogger("test"), {})
        self.trace_id = "0" * 31 + "1"
        self.records: list[tuple[str, dict[str, Any], int]] = []
        self.replies: list[tuple[str, bytes]] = []
        self.events: list[Any] = []  # the saga log `history()` returns (SagaEvents)

    async def history(self) -> list[Any]:
        return list(self.events)

    async def record(self, kind: str, data: dict[str, Any], *, seq: int = 0) -> bool:
        self.records.append((kind, data, seq))
        return True

    async def in_progress(self) -> None:
        return None

    async def publish_reply(self, subject: str, data: bytes) -> None:
        self.replies.append((subject, data))


class ScriptedLLM:
    """An LLM client returning the given answers in turn (the same `complete` interface as LLMClient)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[list[dict[str, str]]] = []

    async def complete(self, messages: list[dict[str, str]], *, purpose: str) -> LLMResult:
        self.calls.append(messages)
        return LLMResult(text=self.answers.pop(0), model="scripted")


def make_message(text: str, email: str = "user@example.com", *, verified: bool = True,
                 **payload: Any) -> Message:
    """A message at its first step, with payload fields already set (from a signed-in customer unless
    `verified` is False: a guest)."""
    message = new_message(session_id="test-session", customer_email=email, customer_message=text,
                          customer_verified=verified)
    return message.enriched(payload) if payload else message
