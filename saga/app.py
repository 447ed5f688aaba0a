"""How an application plugs into the engine: one `SagaApp` names its message model (payload and subject
prefix), its error handler and answering step, its routes, its results store and its answer for a saga that
cannot finish."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from saga.log import LOG_BUCKET, RUNNING_BUCKET, STATE_BUCKET, SagaEvent
from saga.protocol import Message
from saga.results import ResultStore


@dataclass(frozen=True)
class SagaApp:
    """The application, as the engine sees it."""

    # `Message[ItsPayload]` subclass: parsing, validation, `subject_prefix`.
    message_type: type[Message[Any]]
    # The default error handler of its routes (recovery's decisions go there too).
    error_handler: str
    # The last step of every route: the one that stores the result and answers. A failed saga is answered
    # through it, unless it is what fails.
    answering_actor: str
    # The `ResultStore` subclass holding the final results.
    result_store: type[ResultStore[Any]]
    # Payload fields of a failed saga's answer, given the message, its history and the handoff ticket (if any).
    failed_answer: Callable[[Any, list[SagaEvent], str | None], dict[str, Any]]
    # The final result of a failed saga, when it is answered directly (its answering step is what fails).
    failed_result: Callable[..., Any]
    # The handoff ticket the history says was opened already (None when none was).
    recorded_ticket: Callable[[list[SagaEvent]], str | None] = lambda history: None
    # Named routes (documentation and tools; messages carry their own route).
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def subject_prefix(self) -> str:
        """Messages travel on `<subject_prefix>.<actor>`."""
        return self.message_type.subject_prefix

    def subject_for(self, actor: str) -> str:
        """The subject an actor consumes from."""
        return self.message_type.subject_for(actor)

    @property
    def buckets(self) -> tuple[str, ...]:
        """The KV buckets the engine stores this application's sagas in."""
        return (LOG_BUCKET, STATE_BUCKET, RUNNING_BUCKET, self.result_store.bucket)
