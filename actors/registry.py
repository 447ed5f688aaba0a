"""Every actor of the mesh and what running it takes, in one place.

`supportmesh up` starts these actors in this order, `python -m actors <name>` finds an actor's module here,
`k8s/generate_actors.py` writes one Deployment (and one KEDA ScaledObject) per entry, the drain formula
(`actors/drain.py`) reads the LLM calls, and the process wiring zero-fills the metrics of these names.

The routes are read here too: an actor is a step of every route it names in `routes`, at its place in this
list. Adding an actor is its module (a class exported as `ACTOR`) and one line below (plus its payload field).

A deployment with actors of its own points `SUPPORTMESH_ACTOR_REGISTRY` at a `module:attribute` holding its
list (usually this one with lines added), the way `python -m actors module:Class` names an actor outside
`actors/`; every process of the mesh must see the same value.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from config.settings import Settings, get_settings

# The routes a chat can take (each a sequence of actor names, in registry order).
CHAT = "chat"  # the happy path: the gateway starts every saga on it
ACTION = "action"  # the decision router's detour when it approves an action (the execution step added)
ESCALATION = "escalation"  # to a human: the error handler, then the answer


@dataclass(frozen=True)
class ActorSpec:
    """One actor: where its code is and how it is run, scaled and routed."""

    name: str
    # Module exporting the actor class as `ACTOR` (default `actors.<name>`).
    module: str = ""
    routes: frozenset[str] = field(default_factory=frozenset)
    # LLM calls one step can make: sizes the drain on SIGTERM (actors/drain.py); > 0 also means the pod gets
    # the LLM provider keys and egress to the internet.
    llm_calls_per_step: int = 0
    memory: str = "384Mi"  # the pod's memory limit
    replicas: int = 2  # pods without autoscaling
    autoscale: bool = True  # KEDA on the consumer's backlog, between min_replicas and max_replicas
    min_replicas: int = 1
    max_replicas: int = 8
    # The only writer of the SQLite history: one pod, replaced with Recreate, with the history volume.
    writes_history: bool = False
    # Runs recovery (dead letters, the sweeper) and counts it for every actor.
    runs_recovery: bool = False
    # Suspends sagas to wait for a person (saga.waits): it moves the saga's state to `waiting` and back.
    waits: bool = False

    @property
    def module_name(self) -> str:
        """The module that exports this actor's class as `ACTOR`."""
        return self.module or f"actors.{self.name}"

    @property
    def needs_llm_key(self) -> bool:
        """Whether the actor calls an LLM (its pods get the provider keys)."""
        return self.llm_calls_per_step > 0


# The happy path and the action detour share their steps.
STEPS = frozenset({CHAT, ACTION})
# One line per actor; the order is the routes' order (and the order `supportmesh up` starts them in).
ACTORS: tuple[ActorSpec, ...] = (
    ActorSpec("sentiment_analyzer", routes=STEPS),
    ActorSpec("intent_analyzer", routes=STEPS, llm_calls_per_step=2, memory="768Mi"),
    ActorSpec("context_retriever", routes=STEPS),
    ActorSpec("decision_router", routes=STEPS),
    ActorSpec("response_generator", routes=STEPS, llm_calls_per_step=1, memory="768Mi"),
    ActorSpec("guardrail_validator", routes=STEPS),
    ActorSpec("execution_coordinator", routes=frozenset({ACTION}), waits=True),
    ActorSpec("escalation_router", routes=frozenset({ESCALATION}), runs_recovery=True),
    ActorSpec("response_aggregator", routes=frozenset({CHAT, ACTION, ESCALATION}), replicas=1, autoscale=False,
              writes_history=True),
)


@cache
def _load(ref: str) -> tuple[ActorSpec, ...]:
    module_name, _, attr = ref.partition(":")
    actors = tuple(getattr(importlib.import_module(module_name), attr or "ACTORS"))
    if not all(isinstance(a, ActorSpec) for a in actors) or len({a.name for a in actors}) != len(actors):
        raise ValueError(f"SUPPORTMESH_ACTOR_REGISTRY={ref!r}: not a list of ActorSpec with distinct names")
    return actors


def active(settings: Settings | None = None) -> tuple[ActorSpec, ...]:
    """The registry of this mesh: `ACTORS`, or the list named by `actor_registry` (`SUPPORTMESH_ACTOR_REGISTRY`)
    of `settings` (default: the process's settings)."""
    ref = (settings or get_settings()).actor_registry
    return _load(ref) if ref else ACTORS


def names(actors: Sequence[ActorSpec] | None = None) -> tuple[str, ...]:
    """The actors' names, in registry order (default: the active registry)."""
    return tuple(a.name for a in (active() if actors is None else actors))


def find(name: str, actors: Sequence[ActorSpec] | None = None) -> ActorSpec | None:
    """The entry of the actor `name` (None when it is not registered)."""
    return next((a for a in (active() if actors is None else actors) if a.name == name), None)


def route(kind: str, *, after: str | None = None, actors: Sequence[ActorSpec] | None = None) -> tuple[str, ...]:
    """The steps of a route (`CHAT`, `ACTION`, `ESCALATION`) of a registry (default: the active one); with
    `after`, only the steps after that actor (what a router puts in `remaining_route`)."""
    steps = tuple(a.name for a in (active() if actors is None else actors) if kind in a.routes)
    return steps[steps.index(after) + 1:] if after is not None else steps


def route_answering_first(kind: str, *, after: str, actors: Sequence[ActorSpec] | None = None) -> tuple[str, ...]:
    """`route(kind, after=...)` with the answering actor (the chat route's last step) also placed right before the
    route's first step that is not on the chat route (the step that acts): the customer gets an answer first (a
    question, or "a colleague will review it"), and the saga then waits at the acting step for their yes or a
    colleague's decision; the answering actor answers again at the end."""
    steps = route(kind, after=after, actors=actors)
    chat = set(route(CHAT, actors=actors))
    acting = next((i for i, step in enumerate(steps) if step not in chat), None)
    if acting is None:
        return steps
    return (*steps[:acting], route(CHAT, actors=actors)[-1], *steps[acting:])
