"""The project's image, built and run for real: a private Docker engine (tests/support/docker_engine.py) builds it on a
base made without a registry (tests/support/docker_images.py; cached between runs), then nats-server, redis-server, the
mock APIs, every actor and the gateway run as containers on host networking, as Kubernetes runs the image (one
image for every process, uid 10001, read-only root filesystem, /data and /tmp writable, no capabilities).

A signed-in chat is answered end to end (its history read back from the SQLite file on /data), then an actor
container is `docker kill`ed while chats run, started again, and the chaos suite's invariants must hold.

Outside CI the module skips when no engine can start here (not root, or Debian's docker.io / debootstrap
missing); in CI (`CI` set) it must run. Its timeout includes a cold build (~5 to 8 minutes on these machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from actors import registry
from supportmesh.natsserver import NatsServer, free_port

from tests.support.chaos_load import build_messages, check_invariants, run_load
from tests.support.chat_client import answer
from tests.support.docker_engine import DockerEngine, unavailable_reason
from tests.support.docker_images import IMAGE, REDIS, ImageBuilder
from tests.support.identity import AUTH, TEST_SECRET
from tests.support.mesh import LOAD_LIMITS_ENV

ACTORS = registry.names(registry.ACTORS)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]
HOST = "127.0.0.1"
UID = 10001  # the image's user (Dockerfile, k8s securityContext)
MAX_ATTEMPTS, MAX_REDELIVERIES, MAX_SWEEPS = 4, 1, 2
VICTIM = "execution_coordinator"  # the actor with side effects: a kill there is where a duplicate would show
# As the chaos suite: short deadlines so a killed process's steps come back within seconds.
MESH_ENV = {
    "SUPPORTMESH_CHAT_DEADLINE_S": "3", "SUPPORTMESH_ACK_WAIT_S": "3", "SUPPORTMESH_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "SUPPORTMESH_BACKOFF_BASE_S": "0.2", "SUPPORTMESH_BACKOFF_MAX_S": "1", "SUPPORTMESH_STALL_AFTER_S": "20",
    "SUPPORTMESH_SWEEP_INTERVAL_S": "2", "SUPPORTMESH_REDELIVERY_DELAY_S": "0.2",
    "SUPPORTMESH_MAX_REDELIVERIES": str(MAX_REDELIVERIES), "SUPPORTMESH_MAX_SWEEPS": str(MAX_SWEEPS),
    "SUPPORTMESH_METRICS_HOST": HOST, "SUPPORTMESH_LOG_LEVEL": "WARNING", **LOAD_LIMITS_ENV,
}
# The pod security context of k8s/, in `docker run` flags.
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    """A private dockerd (skips outside CI where none can start)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no Docker engine can start here: {reason}")
    eng = DockerEngine().start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def images(engine: DockerEngine) -> dict[str, float]:
    """The base and project images, built or loaded from the cache; how long each part took."""
    started = time.monotonic()
    timings = ImageBuilder(engine).ensure()
    timings["images_total_s"] = round(time.monotonic() - started, 1)
    size = engine.run("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip()
    timings["image_size_mb"] = round(int(size) / 1e6)
    print(f"\ndocker images: {json.dumps(timings)}")
    return timings


def owned_dir(path: Path) -> Path:
    """A host folder the image's user may write (bind-mounted at /data)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


class ContainerMesh:
    """The mesh as containers of one image on host networking, on free loopback ports."""

    def __init__(self, engine: DockerEngine, folder: Path) -> None:
        self.engine = engine
        self.folder = folder
        self.history_dir = owned_dir(folder / "history")  # the gateway and the response aggregator share it
        self.nats = NatsServer(store_dir=Path("/data/jetstream"), host=HOST, port=free_port(HOST),
                               monitor_port=free_port(HOST))
        self.redis_port, self.mocks_port, self.gateway_port = free_port(HOST), free_port(HOST), free_port(HOST)
        self.actor_ports = {actor: free_port(HOST) for actor in ACTORS}
        self.env = {**MESH_ENV, "SUPPORTMESH_NATS_URL": self.nats.url,
                    "SUPPORTMESH_REDIS_URL": f"redis://{HOST}:{self.redis_port}/0",
                    **{f"SUPPORTMESH_{api}_API_URL": self.mocks_url for api in ("CUSTOMERS", "ORDERS", "TRACKING")}}

    @property
    def mocks_url(self) -> str:
        return f"http://{HOST}:{self.mocks_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    @property
    def endpoints(self) -> dict[str, Any]:
        """What chaos_load's invariant checks read (as `supportmesh up`'s endpoints.json names it)."""
        return {"nats_url": self.nats.url, "gateway_url": self.gateway_url, "mocks_url": self.mocks_url,
                "sqlite_path": str(self.history_dir / "history.db")}

    def run(self, name: str, *args: str, env: dict[str, str] | None = None, volumes: tuple[str, ...] = ()) -> None:
        """Start a container of the project's image: `supportmesh ARGS` (or the `--entrypoint` in ARGS)."""
        flags = [f"--env={k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        flags += [f"--volume={v}" for v in volumes]
        self.engine.run("run", "-d", "--name", name, "--network", "host", *HARDENED, *flags, *args)

    def start(self, timeout_s: float = 120.0) -> ContainerMesh:
        """Start every container and wait until each one is ready."""
        conf = self.folder / "nats.conf"
        conf.write_text(self.nats.config_text())
        conf.chmod(0o644)
        self.run("nats", "--entrypoint", "nats-server", IMAGE, "-c", "/etc/nats/nats.conf",
                 volumes=(f"{conf}:/etc/nats/nats.conf:ro", f"{owned_dir(self.folder / 'nats')}:/data"))
        self.engine.run("run", "-d", "--name", "redis", "--network", "host", "--user", "redis", *HARDENED, REDIS,
                        "redis-server", "--bind", HOST, "--port", str(self.redis_port), "--save", "",
                        "--appendonly", "no", "--dir", "/tmp", "--protected-mode", "yes")
        self.run("mocks", IMAGE, "mocks", "--host", HOST, "--port", str(self.mocks_port))
        self.wait_ready({"nats": f"{self.nats.monitor_url}/healthz?js-enabled-only=true",
                         "mocks": f"{self.mocks_url}/healthz"}, timeout_s)
        for actor, port in self.actor_ports.items():
            self.start_actor(actor, port)
        self.run("gateway", IMAGE, "gateway", volumes=(f"{self.history_dir}:/data",),
                 env={"SUPPORTMESH_GATEWAY_HOST": HOST, "SUPPORTMESH_GATEWAY_PORT": str(self.gateway_port),
                      "SUPPORTMESH_AUTH_SECRET": TEST_SECRET})
        self.wait_ready({"gateway": f"{self.gateway_url}/readyz", **{
            actor: f"http://{HOST}:{port}/readyz" for actor, port in self.actor_ports.items()}}, timeout_s)
        return self

    def start_actor(self, actor: str, port: int) -> None:
        """One actor's container (the response aggregator writes the history on /data)."""
        volumes = (f"{self.history_dir}:/data",) if actor == "response_aggregator" else ()
        self.run(container(actor), IMAGE, "actor", actor, volumes=volumes,
                 env={"SUPPORTMESH_METRICS_PORT": str(port), "OTEL_SERVICE_NAME": f"supportmesh-{actor}"})

    def wait_ready(self, urls: dict[str, str], timeout_s: float) -> None:
        """Wait until every URL answers 200, our processes naming themselves (so a port another container holds
        never passes for this one); on a timeout, fail with the logs of the containers that did not."""
        pending = dict(urls)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2) as client:
            while pending and time.monotonic() < deadline:
                for name, url in list(pending.items()):
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        r = client.get(url)
                        if r.status_code == 200 and (name == "nats" or r.json().get("service") == name):
                            pending.pop(name)
                if pending:
                    time.sleep(0.25)
        if pending:
            logs = {name: self.logs(container(name)) for name in pending}
            raise AssertionError(f"containers not ready after {timeout_s}s: {logs}")

    def logs(self, name: str) -> str:
        """The end of a container's output and its state."""
        state = self.engine.run("inspect", "-f", "{{.State.Status}} exit={{.State.ExitCode}}", name, check=False)
        out = self.engine.run("logs", "--tail", "30", name, check=False)
        return f"[{state.stdout.strip()}] {(out.stdout + out.stderr)[-2000:]}"


def container(actor_or_name: str) -> str:
    """A container's name (docker names allow `_`, but the k8s names use `-`)."""
    return actor_or_name.replace("_", "-")


@pytest.fixture(scope="module")
def docker_mesh(engine: DockerEngine, images: dict[str, float], tmp_path_factory) -> ContainerMesh:
    return ContainerMesh(engine, tmp_path_factory.mktemp("docker-mesh")).start()


def test_signed_in_chat_is_answered_by_the_containers(docker_mesh: ContainerMesh, images: dict[str, float]) -> None:
    orders = httpx.get(f"{docker_mesh.mocks_url}/customers/user@example.com/orders", timeout=10).json()["orders"]
    order = orders[0]["order_id"]
    session = uuid.uuid4().hex

    body = answer(docker_mesh.gateway_url, f"Where is my order {order}?", session=session)

    assert body["status"] == "resolved" and order in body["response"], body
    # The history the response aggregator wrote on /data, read back by the gateway (the start that crashed
    # when the image's data dir was under root-owned /app).
    history = httpx.get(f"{docker_mesh.gateway_url}/api/sessions/{session}/history", timeout=10,
                        headers=AUTH).json()["messages"]
    assert [(m["sender"], m["message_id"].split(":")[0]) for m in history] == [
        ("customer", body["message_id"]), ("agent", body["message_id"])]
    db = docker_mesh.history_dir / "history.db"
    assert db.stat().st_uid == UID
    user = docker_mesh.engine.run("inspect", "-f", "{{.Config.User}}", "gateway").stdout.strip()
    assert user.split(":")[0] == str(UID)


IN_FLIGHT = re.compile(r'^supportmesh_steps_in_flight\{actor="[a-z_]+"\} (\S+)$', re.MULTILINE)


def steps_in_flight(metrics_url: str) -> float:
    """Deliveries the actor process is running now (its own gauge)."""
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return 0
    return sum(float(value) for value in IN_FLIGHT.findall(text))


async def kill_when_busy(mesh: ContainerMesh, timeout_s: float = 60) -> float:
    """`docker kill` the victim's container once it holds a step, then start it again; when it was killed
    (monotonic clock, as chaos_load's outcomes)."""
    metrics = f"http://{HOST}:{mesh.actor_ports[VICTIM]}/metrics"
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(steps_in_flight, metrics) <= 0:
        assert time.monotonic() < deadline, f"{VICTIM} never held a step in {timeout_s}s"
        await asyncio.sleep(0.05)
    killed_at = time.monotonic()
    await asyncio.to_thread(mesh.engine.run, "kill", container(VICTIM))
    await asyncio.to_thread(mesh.engine.run, "start", container(VICTIM))
    return killed_at


def test_actor_container_killed_mid_load_loses_and_doubles_nothing(docker_mesh: ContainerMesh) -> None:
    messages = build_messages(docker_mesh.mocks_url, 60)
    # Commerce APIs with real latency: a kill catches steps in flight.
    faults = {"default": {"latency_ms": 100, "latency_jitter_ms": 200}}
    httpx.put(f"{docker_mesh.mocks_url}/_admin/faults", json=faults, timeout=10).raise_for_status()
    since = time.time()

    async def scenario() -> tuple[float, list[Any]]:
        load = asyncio.create_task(run_load(docker_mesh.gateway_url, messages, concurrency=10))
        try:
            killed_at = await kill_when_busy(docker_mesh)
        except BaseException:
            load.cancel()
            raise
        return killed_at, await load

    try:
        killed_at, outcomes = asyncio.run(scenario())
    finally:
        httpx.put(f"{docker_mesh.mocks_url}/_admin/faults", json={}, timeout=10)
    running = docker_mesh.engine.run("inspect", "-f", "{{.State.Running}}", container(VICTIM)).stdout.strip()
    assert running == "true", docker_mesh.logs(container(VICTIM))
    across = [o for o in outcomes if o.started_at < killed_at < o.started_at + o.seconds]
    assert across, "no chat was in flight when the actor was killed"
    figures = check_invariants(docker_mesh.endpoints, outcomes, since=since, max_deliveries=MAX_ATTEMPTS + 1,
                               max_republishes=MAX_REDELIVERIES + MAX_SWEEPS)
    print(f"\ndocker kill {VICTIM} mid-load: {json.dumps({**figures, 'in_flight_at_kill': len(across)})}")
