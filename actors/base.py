"""What an actor is: a name and one async handler (`saga.actor.Actor`). Everything else (NATS, saga log,
retries, tracing, metrics) is the engine's job (`saga.runtime`, wired for this mesh by `actors.runtime`), so
actor modules hold only their own logic.

- A *processor* returns its enrichment: a dict of `MessagePayload` fields it adds.
- A *router* returns a `StepResult` that may also replace the remaining steps of the route.
- Raise `RetryableError` (or let a timeout / connection error / 5xx escape) for transient failures and
  `PermanentError` for failures that a retry cannot fix.
- An actor may implement `on_saga_failed`: the runtime of its process calls it when it fails a saga for good
  (the error handler's does: its own failures, dead letters, the sweeper), e.g. to hand the customer to a human.
"""

from __future__ import annotations

from saga.actor import Actor, FailureContext, StepContext, StepResult
from saga.errors import PermanentError, RetryableError

__all__ = ["Actor", "FailureContext", "PermanentError", "RetryableError", "StepContext", "StepResult"]
