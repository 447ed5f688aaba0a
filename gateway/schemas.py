"""The gateway's HTTP request and response bodies (what the OpenAPI schema at /docs shows)."""

from __future__ import annotations

import re
from typing import Literal

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
    """The agent's answer."""


class ChatPending(BaseModel):
    """The saga is still running: poll `GET /api/chat/{message_id}` or follow its events."""

    message_id: str
    status: Literal["processing"] = "processing"
    trace_id: str | None = None
