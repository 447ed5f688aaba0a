"""Retry policy: which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from saga.errors import PermanentError, RetryableError

# LiteLLM's transient provider errors, matched by name so that processes without LiteLLM need not import it.
_LLM_TRANSIENT = frozenset(
    {
        "APIConnectionError",
        "Timeout",
        "RateLimitError",
        "ServiceUnavailableError",
        "InternalServerError",
        "APIError",
        "BadGatewayError",
    }
)


def is_retryable(exc: BaseException) -> bool:
    """True for transient failures (timeouts, connection errors, 5xx, 429, LLM provider errors).

    Invalid data and programming errors are not retried: the same input would fail the same way.
    """
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status >= 500 or status == 429
    if isinstance(exc, (httpx.TimeoutException, httpx.TransportError)):
        return True
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    if type(exc).__name__ in _LLM_TRANSIENT:
        return True
    if isinstance(exc, (ValidationError, ValueError, TypeError, KeyError, AttributeError, LookupError)):
        return False
    # Unknown failures get the bounded retry budget: losing a message is worse than a retry.
    return True


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a little jitter, bounded by `max_attempts` deliveries."""

    max_attempts: int = 4
    base_s: float = 0.25
    max_s: float = 5.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based). Never below the exponential
        value, so callers can rely on it as a lower bound."""
        raw = min(self.max_s, self.base_s * (2 ** max(0, attempt - 1)))
        return raw * (1.0 + random.uniform(0.0, self.jitter))

    def exhausted(self, attempt: int) -> bool:
        """True when attempt number `attempt` was the last one allowed."""
        return attempt >= self.max_attempts
