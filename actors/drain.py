"""How long a stopping actor waits for its steps in flight, and the pod's grace period around that, in one place:
the runtime's drain (`ActorRuntime.stop`) and k8s/generate_actors.py both use these. The LLM calls of a step come
from the actor registry."""

from __future__ import annotations

import math
from collections.abc import Sequence

from actors.registry import ActorSpec, find
from config.settings import LOCAL_LLM_MODEL, Settings

# After a step's last LLM call: its ack, its saga writes and the next hop.
STEP_FINISH_S = 10.0
# Around the drain: stopping the pull loop before it, closing the actor and the connection after it.
STOP_OVERHEAD_S = 5.0
MIN_GRACE_S = 30


def worst_llm_step_s(actor: str, settings: Settings, actors: Sequence[ActorSpec] | None = None) -> float:
    """The longest one step of `actor` can spend in LLM calls: each call tries `llm_retries + 1` times for up to
    `llm_timeout_s`, plus one more try when it falls back to another provider (the local model answers at once,
    and a model that is its own fallback is not asked again). `actors`: the registry (default: the active one);
    an actor not in it makes no LLM call."""
    spec = find(actor, actors)
    fallback = settings.llm_fallback_model or LOCAL_LLM_MODEL
    provider_fallback = fallback not in (LOCAL_LLM_MODEL, settings.llm_model)
    tries = settings.llm_retries + 1 + int(provider_fallback)
    return (spec.llm_calls_per_step if spec else 0) * tries * settings.llm_timeout_s


def step_drain_s(actor: str, settings: Settings, actors: Sequence[ActorSpec] | None = None) -> float:
    """How long a stopping actor waits for the steps in flight to finish (the longest step, then its writes)."""
    return worst_llm_step_s(actor, settings, actors) + STEP_FINISH_S


def termination_grace_s(actor: str, settings: Settings, actors: Sequence[ActorSpec] | None = None) -> int:
    """The pod's grace period on SIGTERM: the drain plus stopping and closing around it (at least MIN_GRACE_S)."""
    return max(MIN_GRACE_S, math.ceil(step_drain_s(actor, settings, actors) + STOP_OVERHEAD_S))
