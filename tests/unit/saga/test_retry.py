"""The retry policy (`saga/retry.py`) as its docstrings state it: which failures are worth another attempt
(timeouts, connection errors, 5xx, 429, LiteLLM's transient provider errors, unknown failures) and which are
not (other 4xx, invalid data, programming errors, `PermanentError`), and how long to wait: exponential from
`base_s`, capped at `max_s`, never below the exponential value and at most `jitter` above it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from actors.base import PermanentError, RetryableError
from saga.retry import RetryPolicy, is_retryable


def status_error(status: int) -> httpx.HTTPStatusError:
    """What `response.raise_for_status()` raises for `status`."""
    request = httpx.Request("POST", "http://orders.test/orders/12345/refunds")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_server_errors_and_too_many_requests_are_retried(status: int) -> None:
    assert is_retryable(status_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 422, 499])
def test_client_errors_other_than_429_are_permanent(status: int) -> None:
    assert not is_retryable(status_error(status))


REQUEST = httpx.Request("GET", "http://orders.test/orders/12345")


@pytest.mark.parametrize("exc", [
    httpx.ConnectTimeout("connect", request=REQUEST), httpx.ReadTimeout("read", request=REQUEST),
    httpx.PoolTimeout("pool", request=REQUEST), httpx.ConnectError("refused", request=REQUEST),
    httpx.ReadError("reset", request=REQUEST), httpx.RemoteProtocolError("eof", request=REQUEST),
    asyncio.TimeoutError(), TimeoutError(), ConnectionError(), ConnectionRefusedError(), ConnectionResetError(),
], ids=type)
def test_timeouts_and_connection_errors_are_retried(exc: BaseException) -> None:
    assert is_retryable(exc)


def _named(name: str, base: type[Exception] = Exception) -> Exception:
    """An exception of a class called `name` (LiteLLM's errors are matched by name, without importing it)."""
    return type(name, (base,), {})("provider trouble")


@pytest.mark.parametrize("name", ["APIConnectionError", "Timeout", "RateLimitError", "ServiceUnavailableError",
                                  "InternalServerError", "APIError", "BadGatewayError"])
def test_transient_llm_provider_errors_are_retried_by_name(name: str) -> None:
    assert is_retryable(_named(name))
    # Matched before the invalid-data rule: a provider error deriving from ValueError is still transient.
    assert is_retryable(_named(name, ValueError))


class _Model(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Model.model_validate({"n": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("no validation error")


@pytest.mark.parametrize("exc", [
    _validation_error(), ValueError("bad"), TypeError("bad"), KeyError("k"), AttributeError("a"), IndexError("i"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte"), _named("OrderPayloadError", ValueError),
], ids=lambda e: type(e).__name__)
def test_invalid_data_and_programming_errors_are_not_retried(exc: BaseException) -> None:
    assert not is_retryable(exc)


def test_the_actors_own_verdict_wins() -> None:
    assert is_retryable(RetryableError("try again"))
    assert not is_retryable(PermanentError("never"))
    # Even where the cause alone would say otherwise.
    class RetryableValue(RetryableError, ValueError): ...

    class PermanentTimeout(PermanentError, TimeoutError): ...

    assert is_retryable(RetryableValue("x")) and not is_retryable(PermanentTimeout("x"))


def test_unknown_failures_get_the_bounded_retry_budget() -> None:
    assert is_retryable(RuntimeError("something odd"))
    assert is_retryable(_named("SomethingNobodyExpected"))


# ---- backoff ---------------------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_and_never_goes_below_it() -> None:
    policy = RetryPolicy(base_s=0.25, max_s=100.0, jitter=0.0)
    assert [policy.delay(a) for a in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert policy.delay(0) == policy.delay(-3) == 0.25  # attempts count from 1; below that is the first


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(base_s=0.25, max_s=5.0, jitter=0.0)
    assert [policy.delay(a) for a in (5, 6, 7, 20, 200)] == [4.0, 5.0, 5.0, 5.0, 5.0]


def test_jitter_adds_at_most_its_share_and_never_subtracts() -> None:
    policy = RetryPolicy(base_s=0.25, max_s=5.0, jitter=0.1)
    for attempt in range(1, 12):
        floor = min(5.0, 0.25 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(floor <= d <= floor * 1.1 for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered: replicas retrying together do not stay in step


def test_the_budget_counts_deliveries() -> None:
    policy = RetryPolicy(max_attempts=4)
    assert [policy.exhausted(a) for a in range(1, 6)] == [False, False, False, True, True]
    assert RetryPolicy().max_attempts == 4  # README: SUPPORTMESH_MAX_ATTEMPTS defaults to 4
