"""`Idempotency-Key` on `POST /api/chat`: a client that sends the same message again (a retry after a timeout, a
double click, a reconnecting widget) gets the same saga, never a second one (a second refund).

The key does not go into storage of its own: the message id is derived from it, scoped to who sends it and the
session, so the saga log itself is the record of the first attempt. The first attempt's `saga_started` is
written with KV `create` (written once, whoever races), and only the attempt that wrote it publishes the first
step; every other attempt follows that saga to its answer.
"""

from __future__ import annotations

import hashlib
import re

from fastapi import HTTPException

from saga.log import SagaLog

IDEMPOTENCY_HEADER = "Idempotency-Key"
# What a client may use as a key: UUIDs, ULIDs, hashes, "order-12345-refund-2"...
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def message_id_for(owner: str, session_id: str, key: str) -> str:
    """The message id of a chat sent with `key` by `owner` in `session_id`: the same key names the same saga,
    and nobody else's key can name it (the owner is part of it)."""
    if not IDEMPOTENCY_KEY.match(key):
        raise HTTPException(422, f"{IDEMPOTENCY_HEADER} must be 1-128 characters of [A-Za-z0-9._:-]")
    return hashlib.sha256(f"{owner}\n{session_id}\n{key}".encode()).hexdigest()[:32]


async def earlier_attempt(saga: SagaLog, message_id: str, text: str) -> bool:
    """Whether a chat with this key was already accepted (True: follow it, start nothing). 409 when the key was
    used for another message, or for one whose start was never recorded (it was refused: send it again with a
    new key)."""
    if await saga.state(message_id) is None:
        return False
    started = await saga.get_event(message_id, 0, "saga_started")
    if started is None:
        raise HTTPException(409, f"the message sent with this {IDEMPOTENCY_HEADER} was not accepted: "
                                 "send it again with a new key")
    first = started.data.get("message", {}).get("payload", {}).get("customer_message")
    if first != text:
        raise HTTPException(409, f"this {IDEMPOTENCY_HEADER} was already used for another message")
    return True
