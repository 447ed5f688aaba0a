"""The JetStream writes that ride through a leader election (saga/jetstream.py), against a stand-in connection:
transient failures are retried within the bound, answers (a full stream, a wrong sequence) are not."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import nats.errors
import pytest
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from saga.jetstream import RetryingJetStream, ambiguous_writes, is_transient, servers


class FlakyConnection:
    """Answers a publish with each of `failures` in turn (an exception to raise), then with an ack."""

    def __init__(self, *failures: BaseException | dict) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def request(self, subject, payload, timeout, headers=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, BaseException):
                raise failure
            return SimpleNamespace(data=json.dumps({"error": failure}).encode())
        return SimpleNamespace(data=json.dumps({"stream": "S", "seq": self.calls}).encode())


def js(conn: FlakyConnection, retry_s: float = 5.0) -> RetryingJetStream:
    return RetryingJetStream(conn, retry_s=retry_s, base_s=0.01, max_s=0.02, timeout=1)


def test_a_write_rides_through_no_responders_timeouts_and_503s() -> None:
    unavailable = {"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"}
    conn = FlakyConnection(nats.errors.NoRespondersError(), nats.errors.TimeoutError(), unavailable)

    async def write() -> tuple[int, bool]:
        with ambiguous_writes() as retried:
            ack = await js(conn).publish("s.x", b"1")
        return ack.seq, retried[0]

    seq, ambiguous = asyncio.run(write())
    assert conn.calls == 4 and seq == 4
    assert ambiguous  # an attempt timed out: it may have been stored


def test_answers_are_not_retried_and_the_bound_holds() -> None:
    full = {"code": 503, "err_code": 10077, "description": "maximum bytes exceeded"}
    conn = FlakyConnection(full)
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(js(conn).publish("s.x", b"1"))
    assert conn.calls == 1
    wrong = {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}
    conn = FlakyConnection(wrong)
    with pytest.raises(APIError):
        asyncio.run(js(conn).publish("s.x", b"1"))
    assert conn.calls == 1
    conn = FlakyConnection(*[nats.errors.NoRespondersError()] * 1000)
    with pytest.raises(NoStreamResponseError):
        asyncio.run(js(conn, retry_s=0.2).publish("s.x", b"1"))
    assert 1 < conn.calls < 1000


def test_transient_failures_and_seed_urls() -> None:
    assert is_transient(NoStreamResponseError()) and is_transient(nats.errors.TimeoutError())
    assert not is_transient(ValueError())
    assert servers("nats://a:4222, nats://b:4222,,") == ["nats://a:4222", "nats://b:4222"]
    assert servers("nats://a:4222") == ["nats://a:4222"]
