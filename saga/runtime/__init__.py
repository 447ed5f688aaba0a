"""The durable actor runtime, by concern:

- `consumer`: lifecycle, the pull loop (`pull`: one request open for the free slots), one delivery (parse, span,
  step), the backlog gauges;
- `step`: the step as a pipeline (reuse the recorded result → run the handler → record and forward);
- `failures`: retry, the error handler, misrouted and poison messages;
- `failing`: failing a saga for good (ticket, `saga_failed`, the answer);
- `waiting`: waits (suspend a step, the fired timer, the resume; see `saga.waits`);
- `context`: the `StepContext` handlers get; `core`: what they all share; `crash`: chaos crash points.

Recovery (dead letters, the sweeper) is its own component: `saga.recovery`.
"""

from saga.runtime.consumer import Runtime

__all__ = ["Runtime"]
