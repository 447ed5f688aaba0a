"""The gateway's HTTP request and response bodies (what the OpenAPI schema at /docs shows)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.domain import email_problem, refused_if, text_problem
from actors.results import ChatAnswer

# Deliberately simple: one @, a dot in the domain, no spaces. Real validation is the customer API's job; the
# characters that end or escape a URL path segment (/ ? # % \) are refused first, with their own reason.
EMAIL = re.compile(r"^[A-Za-z0-9.!$&'*+=^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
MAX_MESSAGE_CHARS = 4000


class ChatRequest(BaseModel):
    """One customer message."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    session_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=["demo-session-1"])
    # Who the customer is comes from the bearer token, never from here: with a token this may be omitted and
    # must match its `sub` when given; a guest gives it (with the order number) to ask about that one order.
    customer_email: str | None = Field(default=None, max_length=254, examples=["user@example.com"])
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, examples=["My order 12345 is late!"])

    @field_validator("customer_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        refused_if(email_problem(value), value)
        if not EMAIL.match(value):
            raise ValueError("customer_email is not a valid email address")
        return value.lower()

    @field_validator("message")
    @classmethod
    def _printable(cls, value: str) -> str:
        return refused_if(text_problem(value), value)


class SessionCreated(BaseModel):
    """A new session, bound to the caller (a guest keeps its id: it is what proves the session is theirs)."""

    session_id: str
    signed_in: bool


class DemoSignIn(BaseModel):
    """Sign in as one of the seeded demo customers (local demo only)."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=254, examples=["user@example.com"])


class ChatResponse(ChatAnswer):
    """The agent's answer; `with_agent` when a person has the conversation (no saga ran: the message went to
    the support team's queue, and the agent's reply comes on the session's events)."""

    status: Literal["resolved", "escalated", "needs_confirmation", "pending_approval",  # type: ignore[assignment]
                    "with_agent"]


class QueueItem(BaseModel):
    """One item of the support team's queue: an open hand-over (a person has the conversation), or a saga
    waiting for a person's approval (`approval`: wired to the saga engine's waits next)."""

    kind: Literal["handover", "approval"]
    session_id: str
    message_id: str = Field(description="the escalated message (a hand-over) or the waiting saga (an approval)")
    customer_email: str
    verified: bool = Field(description="false: a guest, the email is only what they typed")
    ticket_id: str | None = None
    reason: str = ""
    opened_at: float
    customer_messages: int = Field(0, description="messages the customer wrote since a person took over")
    agent_replies: int = 0
    last_customer_message: str = ""
    last_customer_at: float | None = None
    last_agent: str | None = None
    proposed_action: dict[str, Any] | None = None


class Queue(BaseModel):
    """The support team's queue, oldest first."""

    items: list[QueueItem]


class AgentReply(BaseModel):
    """An agent's reply to the customer of a hand-over."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)

    @field_validator("text")
    @classmethod
    def _printable(cls, value: str) -> str:
        return refused_if(text_problem(value), value)


class Decision(BaseModel):
    """An agent's decision on a saga waiting for approval (a note is required to deny)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    note: str = Field(default="", max_length=2000)


class ChatPending(BaseModel):
    """The saga is still running: poll `GET /api/chat/{message_id}` or follow its events."""

    message_id: str
    status: Literal["processing"] = "processing"
    trace_id: str | None = None
