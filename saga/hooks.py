"""The runtime's cross-cutting concerns (tracing, metrics) as one small, fixed list of hooks. The engine calls
them; the process wiring installs an implementation (the support mesh's is `observability.hooks`). The
default, `NoHooks`, does nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class StepHooks(Protocol):
    """Called by the runtime and recovery at fixed points. Spans are context managers."""

    def step_span(self, actor: str, subject: str, message: Any, hop_id: str, attempt: int,
                  headers: dict[str, str], links: list[dict[str, str]] | None = None,
                  ) -> contextlib.AbstractContextManager[Any]:
        """Around one step (a CONSUMER span continuing the hop's trace context from `headers`); `links`: W3C
        carriers of spans it follows from (a resumed step: the step that waited)."""
        ...

    def publish_span(self, subject: str, message_id: str, hop_id: str) -> contextlib.AbstractContextManager[Any]:
        """Around the publish of one hop (a PRODUCER span)."""
        ...

    def recovery_span(self, name: str, carrier: dict[str, str] | None,
                      message: Any = None) -> contextlib.AbstractContextManager[Any]:
        """Around recovery moving a saga, in the trace of `carrier` (W3C headers) when given; `message`: the
        message it resumes."""
        ...

    def trace_headers(self) -> dict[str, str]:
        """The current trace context as message headers."""
        ...

    def trace_id(self) -> str | None:
        """The current trace id."""
        ...

    def on_step_error(self, exc: BaseException) -> None:
        """A handler raised: note it on the step's span."""
        ...

    def on_step_start(self, actor: str) -> None:
        """A delivery begins (its `on_step_outcome` follows when it ends, whatever happens)."""
        ...

    def on_step_end(self, actor: str, seconds: float) -> None:
        """A step took `seconds` from receipt to ack (called inside its span)."""
        ...

    def on_step_outcome(self, actor: str, outcome: str) -> None:
        """A delivery ended: completed, memoized, retried, failed, poison, misrouted or error."""
        ...

    def on_retry(self, actor: str) -> None:
        """A retry was scheduled."""
        ...

    def on_redelivery(self, actor: str, source: str) -> None:
        """A step is delivered again (source: jetstream, retry, sweeper)."""
        ...

    def on_dead_letter(self, actor: str) -> None:
        """JetStream gave up on a delivery of `actor`, or it terminated one."""
        ...

    def on_saga_event(self, kind: str) -> None:
        """A saga event was written."""
        ...

    def on_backlog(self, actor: str, pending: int, ack_pending: int) -> None:
        """The actor's consumer backlog."""
        ...

    def on_storage(self, stream: str, used_bytes: int, max_bytes: int) -> None:
        """Bytes used and size limit of a stream or bucket."""
        ...

    def on_started(self, actor: str, *, recovery: bool = False) -> None:
        """An actor's runtime (or recovery, with `recovery`) started: create its series at zero."""
        ...

    def on_wait_started(self, actor: str, signal: str) -> None:
        """A step of `actor` suspended its saga until `signal` or its timer."""
        ...

    def on_wait_ended(self, actor: str, signal: str, kind: str, waited_s: float) -> None:
        """A wait of `actor` ended (kind: signal or timer) after `waited_s`; its step runs again."""
        ...


class NoHooks:
    """Hooks that do nothing."""

    @contextlib.contextmanager
    def _nothing(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        yield None

    step_span = publish_span = recovery_span = _nothing

    def trace_headers(self) -> dict[str, str]:
        return {}

    def trace_id(self) -> str | None:
        return None

    def _ignore(self, *args: Any, **kwargs: Any) -> None:
        return None

    on_step_error = on_step_start = on_step_end = on_step_outcome = on_retry = on_redelivery = _ignore
    on_dead_letter = on_saga_event = on_backlog = on_storage = on_started = _ignore
    on_wait_started = on_wait_ended = _ignore
