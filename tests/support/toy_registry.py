"""The built-in actor registry plus one line, the toy tenth actor (tests/support/toy_tenth_actor.py), on the chat
route just before the answer. A mesh uses it with `SUPPORTMESH_ACTOR_REGISTRY=tests.support.toy_registry:ACTORS`."""

from __future__ import annotations

from actors.registry import ACTORS as BUILT_IN
from actors.registry import CHAT, ActorSpec

ACTORS = (*BUILT_IN[:-1],
          ActorSpec("length_tagger", module="tests.support.toy_tenth_actor", routes=frozenset({CHAT})),
          BUILT_IN[-1])
