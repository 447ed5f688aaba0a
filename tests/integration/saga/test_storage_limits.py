"""Bounded JetStream storage: every bucket and stream gets its size limit from the settings (old ones too), and a
full one makes the gateway answer 503 with Retry-After (never 500) until space is freed."""

from __future__ import annotations

from nats.js.api import DiscardPolicy

from actors.domain import SUBJECT_PREFIX
from actors.results import RESULTS_BUCKET, ResultStore
from config.settings import MIB, Settings
from observability import metrics
from saga.log import LOG_BUCKET, STATE_BUCKET, SagaLog
from saga.transport import deadletter_stream_name, ensure_deadletter_stream, ensure_stream

CHAT = {"session_id": "s-full", "message": "where is my order 1001?"}  # from the signed-in customer


def test_default_limits_fit_the_k8s_volume_with_headroom() -> None:
    s = Settings()
    limits = [s.saga_log_max_bytes, s.saga_state_max_bytes, s.chat_results_max_bytes, s.stream_max_bytes,
              s.deadletter_max_bytes, s.timers_max_bytes]
    assert all(limit > 0 for limit in limits)
    # The NATS volume is 2 Gi (k8s/base/nats.yaml); JetStream needs room beyond the data for its index and
    # compaction, and the storage alert fires at 80 % of each limit, well before the disk is full.
    assert sum(limits) <= 0.75 * 2048 * MIB


async def test_limits_are_set_on_new_and_existing_buckets_and_streams(harness) -> None:
    js = harness.js
    # The harness created the buckets and the stream without the limits (as an older version did).
    assert (await js.stream_info(f"KV_{LOG_BUCKET}")).config.max_bytes in (-1, None)
    settings = harness.settings.model_copy(update={
        "saga_log_max_bytes": 5 * MIB, "saga_state_max_bytes": 2 * MIB, "chat_results_max_bytes": 3 * MIB,
        "stream_max_bytes": 4 * MIB, "deadletter_max_bytes": MIB})
    await ensure_stream(js, settings, SUBJECT_PREFIX)
    await ensure_deadletter_stream(js, settings)
    await SagaLog.open(js, ttl_s=3600, log_max_bytes=settings.saga_log_max_bytes,
                       state_max_bytes=settings.saga_state_max_bytes)
    await ResultStore.open(js, ttl_s=3600, max_bytes=settings.chat_results_max_bytes)
    expected = {f"KV_{LOG_BUCKET}": 5 * MIB, f"KV_{STATE_BUCKET}": 2 * MIB, f"KV_{RESULTS_BUCKET}": 3 * MIB,
                settings.stream_name: 4 * MIB, deadletter_stream_name(settings): MIB}
    for stream, max_bytes in expected.items():
        config = (await js.stream_info(stream)).config
        assert config.max_bytes == max_bytes, stream
        assert config.discard in (DiscardPolicy.NEW, "new"), stream  # a full store refuses writes, never drops sagas in flight
        if stream.startswith("KV_"):
            assert config.max_msgs_per_subject == 1 and config.allow_direct, stream


async def test_full_saga_log_answers_503_and_recovers(gateway, harness) -> None:
    gw, client = gateway
    js = harness.js
    stream = f"KV_{LOG_BUCKET}"
    info = await js.stream_info(stream)
    info.config.max_bytes = max(info.state.bytes, 1)  # full: the next write is refused
    await js.update_stream(info.config)

    errors = metrics.GATEWAY_RESPONSES.labels("/api/chat", "5xx")
    before = errors._value.get()
    r = await client.post("/api/chat", json=CHAT, headers={"Prefer": "respond-async"})
    assert errors._value.get() == before + 1  # what the gateway-errors alert counts
    # nats-server answers such a write 503 "maximum bytes exceeded" (err_code 10077): unavailable, not a bug.
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"].isdigit()

    info.config.max_bytes = 64 * MIB  # space freed
    await js.update_stream(info.config)
    r = await client.post("/api/chat", json=CHAT, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text


async def test_gateway_counts_an_unhandled_error_as_5xx() -> None:
    """A bug that escapes a route is Starlette's 500: the gateway-errors alert must see it."""
    import httpx
    from fastapi import FastAPI

    from gateway.middleware import CountResponses

    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    app.add_middleware(CountResponses)
    errors = metrics.GATEWAY_RESPONSES.labels("/boom", "5xx")
    before = errors._value.get()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.get("/boom")).status_code == 500
    assert errors._value.get() == before + 1


async def test_limits_above_jetstream_storage_are_refused_loudly(tmp_path) -> None:
    """JetStream reserves every max_bytes against its max_file_store: a bucket that does not fit is refused
    with the server's reason (not a misleading "bucket not found"). k8s/base/nats.yaml sizes max_file_store
    for the defaults (tests/test_k8s.py checks the sum)."""
    import nats
    import pytest
    from nats.js.errors import APIError

    from supportmesh.natsserver import NatsServer

    server = NatsServer(store_dir=tmp_path / "js", max_file_store="100MB").start()
    try:
        nc = await nats.connect(server.url)
        with pytest.raises(APIError) as refused:
            await SagaLog.open(nc.jetstream(), log_max_bytes=80 * MIB, state_max_bytes=64 * MIB)
        assert refused.value.err_code == 10047, refused.value  # insufficient storage resources
        await nc.close()
    finally:
        server.stop()
