"""The customer's reply to a pending confirmation: the next message of a session whose last answer asked
"shall I go ahead?" is the signal of the waiting saga, not a new saga.

- A clear yes or no (`actors.confirmation.classify_reply`) is sent as the saga's `confirmation` signal; the reply
  is the saga's final answer (under the waiting saga's message id): the action done, or not.
- Anything else is sent as `other` (the pending action lapses, nothing is done) and answered as a new question.
- The saga may not be waiting yet when the reply comes (its question is answered one step before the wait
  starts, and that step may be redelivered after a crash): the signal is then kept by the saga
  (`send_signal(..., buffer=True)`) and ends its wait as soon as it starts.
- A signal for a saga that is no longer waiting (timed out, or already decided: the same yes sent twice) gets
  the saga's final answer; one for a saga that ended is a new question.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.confirmation import classify_reply
from actors.results import ChatResult
from gateway.approvals import CONFIRMATION, signal
from gateway.auth import Caller
from gateway.state import Gateway
from saga.protocol import new_message_id

NEEDS_CONFIRMATION = "needs_confirmation"


async def pending_confirmation(gw: Gateway, session_id: str, who: Caller,
                               state: dict[str, Any] | None) -> str | None:
    """The message id of the caller's saga that waits for their yes in this session (`state`: the session's
    state, as just read), if any."""
    if not state or state.get("status") != NEEDS_CONFIRMATION or not state.get("last_message_id"):
        return None
    message_id = str(state["last_message_id"])
    saga = await gw.saga.state(message_id)
    if saga is None or saga.owner != who.owner or saga.session_id != session_id:
        return None
    return message_id


async def answer_confirmation(gw: Gateway, message_id: str, text: str, deadline_s: float) -> tuple[str, ChatResult | None]:
    """Send `text` as the reply to saga `message_id`'s question. Returns what became of it: `answered` (the
    saga's final answer, or None when it is not ready within `deadline_s`: follow `message_id`), or `new_question`
    (answer it as a new message: it is no yes or no, or the saga no longer waits)."""
    answer = classify_reply(text)
    payload: dict[str, Any] = {"answer": answer, "text": text[:4000], "message_id": new_message_id()}
    deadline = time.monotonic() + deadline_s
    outcome = await signal(gw, message_id, CONFIRMATION, payload, buffer=True)
    if answer == "other" or outcome == "not_waiting":
        return "new_question", None
    return "answered", await final_result(gw, message_id, deadline)


async def final_result(gw: Gateway, message_id: str, deadline: float) -> ChatResult | None:
    """The saga's final answer, read until `deadline` (None past it)."""
    while True:
        result = await gw.results.get(message_id, provisional=False)
        if result is not None or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(0.1)
