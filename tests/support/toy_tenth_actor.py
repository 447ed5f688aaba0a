"""A tenth actor, added to a mesh by this file and one registry line (tests/support/toy_registry.py), nothing
else: tests/system/test_tenth_actor.py runs it. It notes the length of the customer's message in `api_data`."""

from __future__ import annotations

from typing import Any

from actors.base import Actor, StepContext
from saga.protocol import Message


class LengthTagger(Actor):
    """Adds `api_data["length_tagger"]`: the number of characters of the customer's message."""

    name = "length_tagger"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        return {"api_data": {**message.payload.api_data, self.name: len(message.payload.customer_message)}}


ACTOR = LengthTagger
