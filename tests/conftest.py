"""Shared fixtures: real servers on loopback, on free ports, in temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import pytest  # noqa: E402

from runtime_harness import Harness  # noqa: E402


@pytest.fixture
async def harness(tmp_path):
    """A fresh nats-server (JetStream, sync always) and helpers to run actors against it."""
    h = Harness(tmp_path)
    await h.start()
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    """The whole local mesh (`supportmesh up`), shared by the end-to-end tests of a session."""
    from mesh_fixture import Mesh

    m = Mesh(tmp_path_factory.mktemp("mesh"), gateways=2,
             env={"SUPPORTMESH_CHAT_DEADLINE_S": "3", "SUPPORTMESH_API_TIMEOUT_S": "6"}).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port."""
    from supportmesh.redisserver import RedisServer

    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fake_ctx():
    """A StepContext stand-in for calling an actor's handler directly."""
    from fakes import FakeContext

    return FakeContext()


@pytest.fixture
async def gateway(harness, redis_url, tmp_path):
    """The gateway application with its connections open, and an HTTP client calling it in process."""
    from gateway.app import create_app

    settings = harness.settings.model_copy(update={
        "redis_url": redis_url, "sqlite_path": str(tmp_path / "history.db"), "chat_deadline_s": 1.5})
    app = create_app(settings)
    gw = app.state.gateway
    await gw.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30)
    try:
        yield gw, client
    finally:
        await client.aclose()
        await gw.stop()
