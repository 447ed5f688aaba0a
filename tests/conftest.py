"""Shared fixtures: real servers on loopback, on free ports, in temporary folders."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402

from tests.support.harness import Harness  # noqa: E402

# The servers and tools the suite runs for real. Outside CI a missing one skips the tests that need it (with a
# reason); in CI (`CI` set, as .ci/run is run) it fails the run at once: a green CI that skipped the browser
# or the dashboards would prove nothing about them.
REQUIRED_IN_CI = {
    "redis-server": "redis-server (Debian package redis-server; `make test` installs it)",
    "prometheus": "prometheus (Debian package prometheus; `make test` installs it)",
    "promtool": "promtool (Debian package prometheus; `make test` installs it)",
    "chromium": "chromium (Debian package chromium; `make test` installs it)",
    "dockerd": "dockerd (Debian package docker.io; `make test` installs it; the image test runs it as root)",
    "debootstrap": "debootstrap (Debian package debootstrap; `make test` installs it)",
}


def in_ci() -> bool:
    """True when running in CI (`CI` set to anything but empty/false/0)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not in_ci():
        return
    missing = [what for tool, what in REQUIRED_IN_CI.items() if shutil.which(tool) is None]
    if missing:
        pytest.exit("CI needs every real server and tool the suite uses; missing: " + "; ".join(missing),
                    returncode=1)


# Fixtures that start real servers (nats-server, redis-server, the whole mesh): a test that uses one is an
# integration test. `make test-fast` runs the others (unit and offline tests); `make test` runs everything.
SERVER_FIXTURES = frozenset({"harness", "gateway", "redis_url", "mesh", "chaos_mesh"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """In CI a skip is a failure: nothing the suite claims to check may silently not run there."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run everything: {reason}"


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
    from tests.support.mesh import Mesh

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


@pytest.fixture(autouse=True)
def signal_handlers_left_alone():
    """Fail the test that leaves a signal handler of its own behind (see tests/support/asgi_server.py): a stale
    uvicorn handler made every later event stream in the run end at once, far from the test that caused it."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    after = {sig: signal.getsignal(sig) for sig in before}
    leaked = {sig.name: handler for sig, handler in after.items() if handler != before[sig]}
    assert not leaked, f"the test left signal handlers behind: {leaked}"


@pytest.fixture
def fake_ctx():
    """A StepContext stand-in for calling an actor's handler directly."""
    from tests.support.fakes import FakeContext

    return FakeContext()


@pytest.fixture
async def gateway(harness, redis_url, tmp_path):
    """The gateway application with its connections open, and an HTTP client calling it in process."""
    from gateway.app import create_app

    from tests.support.identity import AUTH, TEST_SECRET
    from tests.support.mesh import LOAD_LIMITS

    settings = harness.settings.model_copy(update={
        "redis_url": redis_url, "sqlite_path": str(tmp_path / "history.db"), "chat_deadline_s": 1.5,
        "auth_secret": TEST_SECRET, **LOAD_LIMITS})
    app = create_app(settings)
    gw = app.state.gateway
    await gw.start()
    # Signed in as user@example.com (tests/support/identity.py): every request carries the token.
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30,
                               headers=AUTH)
    try:
        yield gw, client
    finally:
        await client.aclose()
        await gw.stop()
