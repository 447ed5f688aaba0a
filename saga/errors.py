"""The failures a step may raise, as the engine classifies them (see `saga.retry.is_retryable`)."""

from __future__ import annotations

from pydantic import ValidationError


class RetryableError(Exception):
    """A transient failure: the runtime retries the step with backoff."""


class PermanentError(Exception):
    """A failure no retry can fix: the message goes to the route's error handler at once."""


def error_text(exc: BaseException) -> str:
    """`Type: message` of an exception, for logs, spans and the saga log, without the input values that a
    validation error quotes (a message's text, an email): pydantic's field locations and reasons only."""
    if isinstance(exc, ValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                            for e in exc.errors(include_input=False, include_url=False, include_context=False))
        return f"{type(exc).__name__}: {exc.error_count()} invalid in {exc.title}: {reasons}"
    return f"{type(exc).__name__}: {exc}"
