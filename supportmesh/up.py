"""`supportmesh up`: the whole mesh on one machine, with one command.

Starts nats-server (JetStream, data under `<data-dir>/jetstream`), redis-server (or uses `SUPPORTMESH_REDIS_URL`),
the mock commerce APIs, every actor (`--replicas N` processes each) and the gateway; supervises them (a crashed
process is restarted with backoff, as Kubernetes would); writes `<data-dir>/endpoints.json` with every URL and
PID; logs each process to `<data-dir>/logs/<name>.log`; prints the widget URL; stops everything in order on
Ctrl-C or SIGTERM.

The gateway verifies customer tokens with `SUPPORTMESH_AUTH_SECRET`; when it is unset, a secret is generated once
and kept at `<data-dir>/secrets/auth-secret` (0600, in a 0700 directory) and reused on the next start
(`supportmesh token EMAIL` signs with it). The demo sign-in picker is on (`SUPPORTMESH_DEMO_SIGN_IN`, default
true here: this is the local demo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from actors import registry
from gateway.auth import load_or_create_secret
from supportmesh import natsauth, redisauth
from config.private_files import write_private
from supportmesh.credentials import MeshCredentials, redis_password_hash
from supportmesh.natsserver import NatsServer, check_sync_interval, cluster_nodes, free_port, wait_healthy
from supportmesh.redisserver import RedisServer
from supportmesh.supervisor import Child, Supervisor

log = logging.getLogger("supportmesh.up")

STOP_ORDER = ["gateway", "actor", "mocks", "prometheus"]


def _port(preferred: int, host: str = "127.0.0.1") -> int:
    """The preferred port when it is free (and not 0), else a free one."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    return free_port(host)


def _serves(response: httpx.Response, child: Child) -> bool:
    """True when `child` itself answered its health check with 200: the answer names its service, so a port that
    another process holds (the child then crash-loops on "address in use") never counts as this child ready."""
    expected = child.actor if child.kind == "actor" else child.kind
    return response.status_code == 200 and response.json().get("service") == expected


class LocalMesh:
    """The local deployment: servers, processes, supervision and `endpoints.json`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        replicas: int = 1,
        host: str = "127.0.0.1",
        gateway_port: int = 8000,
        mocks_port: int = 8100,
        nats_port: int = 4222,
        nats_cluster: int = 1,
        redis_port: int = 6379,
        gateway_replicas: int = 1,
        sync_interval: str = "always",
        observability: bool = False,
        prometheus_port: int = 9090,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.replicas = replicas
        self.host = host
        self.gateway_ports = [_port(gateway_port + i if gateway_port else 0) for i in range(gateway_replicas)]
        self.mocks_port = _port(mocks_port)
        self.redis: RedisServer | None = None
        self.redis_port = redis_port
        self.redis_url = os.environ.get("SUPPORTMESH_REDIS_URL", "")
        # Every process signs in with its own NATS user; Redis users only for the redis-server started here.
        self.credentials = MeshCredentials.load_or_create(
            self.data_dir, [natsauth.GATEWAY, *registry.names(), natsauth.OPERATOR], [] if self.redis_url else list(redisauth.USERS))
        authorization = natsauth.authorization_config(self.credentials.nats_public)
        if nats_cluster > 1:
            # One JetStream cluster on loopback: each node its own store, routes signed in with their own password.
            ports = [_port(nats_port + i if nats_port else 0) for i in range(nats_cluster)]
            self.nats_nodes = cluster_nodes(self.data_dir / "jetstream", nats_cluster, host=host, ports=ports,
                                            route_password=self.credentials.route_password(),
                                            sync_interval=sync_interval, authorization=authorization)
        else:
            self.nats_nodes = [NatsServer(store_dir=self.data_dir / "jetstream", port=_port(nats_port),
                                          sync_interval=sync_interval, authorization=authorization)]
        self.nats = self.nats_nodes[0]
        self.observability = observability
        self.prometheus_port = _port(prometheus_port) if observability else 0
        self.extra_env = env or {}
        self.auth_secret = (self.extra_env.get("SUPPORTMESH_AUTH_SECRET") or os.environ.get("SUPPORTMESH_AUTH_SECRET")
                            or load_or_create_secret(self.data_dir))
        # The sign-in picker of the demo customers: on for the local demo unless turned off.
        self.demo_sign_in = {**os.environ, **self.extra_env}.get("SUPPORTMESH_DEMO_SIGN_IN", "true")
        self.supervisor = Supervisor(on_change=self.write_endpoints)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def gateway_url(self) -> str:
        """URL of the first gateway."""
        return f"http://{self.host}:{self.gateway_ports[0]}"

    @property
    def mocks_url(self) -> str:
        """URL of the mock commerce APIs."""
        return f"http://{self.host}:{self.mocks_port}"

    @property
    def nats_url(self) -> str:
        """The NATS URL the processes get: every node's, comma-separated (one URL for a single server)."""
        return ",".join(node.url for node in self.nats_nodes)

    @property
    def endpoints_path(self) -> Path:
        """Where URLs and PIDs are written."""
        return self.data_dir / "endpoints.json"

    def _env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            **self.extra_env,
            "SUPPORTMESH_NATS_URL": self.nats_url,
            "SUPPORTMESH_REDIS_URL": self.redis_url,
            "SUPPORTMESH_SQLITE_PATH": str(self.data_dir / "history.db"),
            "SUPPORTMESH_CUSTOMERS_API_URL": self.mocks_url,
            "SUPPORTMESH_ORDERS_API_URL": self.mocks_url,
            "SUPPORTMESH_TRACKING_API_URL": self.mocks_url,
            "PYTHONUNBUFFERED": "1",
        }
        if len(self.nats_nodes) > 1:
            env["SUPPORTMESH_NATS_REPLICAS"] = str(len(self.nats_nodes))  # R3 on a 3-node cluster
        env.update(extra)
        return env

    def _credentials_env(self, nats_user: str, redis_user: str | None) -> dict[str, str]:
        """The variables naming a process's NATS user and seed file, and its Redis user and password file."""
        env = {"SUPPORTMESH_NATS_USER": nats_user,
               "SUPPORTMESH_NATS_CREDENTIALS": str(self.credentials.nats_seeds[nats_user])}
        if redis_user and redis_user in self.credentials.redis_passwords:
            env.update(SUPPORTMESH_REDIS_USERNAME=redis_user,
                       SUPPORTMESH_REDIS_PASSWORD_FILE=str(self.credentials.redis_passwords[redis_user]))
        return env

    def _write_redis_acl(self) -> Path:
        """redis-server's ACL file (password hashes only), next to the passwords."""
        path = self.credentials.root / "redis" / "users.acl"
        write_private(path, redisauth.acl_file(lambda user: redis_password_hash(self.credentials.redis_password(user))))
        return path

    async def start(self, ready_timeout_s: float = 90.0) -> None:
        """Start everything and wait until the gateway and every actor report ready. Supervision begins at
        once: a process that crashes while the mesh starts is restarted like any other."""
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        for node in self.nats_nodes:
            node.log_file = self.data_dir / "logs" / (f"nats-server-{node.server_name}.log" if node.server_name
                                                      else "nats-server.log")
            node.start()
        await asyncio.to_thread(wait_healthy, self.nats_nodes, 90.0)
        if not self.redis_url:
            self.redis = RedisServer(data_dir=self.data_dir / "redis", port=_port(self.redis_port),
                                     log_path=self.data_dir / "logs" / "redis-server.log",
                                     acl_file=self._write_redis_acl()).start()
            self.redis_url = self.redis.url
        python = sys.executable
        logs = self.data_dir / "logs"
        self.supervisor.add(Child(
            name="mocks", kind="mocks", url=self.mocks_url, metrics_port=self.mocks_port,
            argv=[python, "-m", "mocks.server", "--host", self.host, "--port", str(self.mocks_port)],
            env=self._env(), log_path=logs / "mocks.log",
        ))
        for actor in registry.names():  # every actor of the registry, in its order
            for i in range(1, self.replicas + 1):
                port = free_port(self.host)
                self.supervisor.add(Child(
                    name=f"{actor}-{i}", kind="actor", actor=actor, metrics_port=port,
                    url=f"http://{self.host}:{port}",
                    argv=[python, "-m", "actors", actor],
                    env=self._env(SUPPORTMESH_METRICS_PORT=str(port), SUPPORTMESH_METRICS_HOST=self.host,
                                  **self._credentials_env(actor, redisauth.SESSIONS
                                                          if actor in redisauth.SESSION_ACTORS else None)),
                    log_path=logs / f"{actor}-{i}.log",
                ))
        for i, port in enumerate(self.gateway_ports, start=1):
            self.supervisor.add(Child(
                name=f"gateway-{i}", kind="gateway", url=f"http://{self.host}:{port}", metrics_port=port,
                argv=[python, "-m", "gateway.server", "--host", self.host, "--port", str(port)],
                env=self._env(SUPPORTMESH_AUTH_SECRET=self.auth_secret, SUPPORTMESH_DEMO_SIGN_IN=self.demo_sign_in,
                              **self._credentials_env(natsauth.GATEWAY, redisauth.GATEWAY)),
                log_path=logs / f"gateway-{i}.log",
            ))
        if self.observability:
            self._start_prometheus()
        self.write_endpoints()
        self._tasks = [asyncio.create_task(self.supervisor.run()), asyncio.create_task(self._watch_servers())]
        await self.wait_ready(ready_timeout_s)
        self.write_endpoints(ready=True)

    def _start_prometheus(self) -> None:
        from observability.prometheus import ALERT_RULES, render_scrape_config

        targets: dict[str, list[str]] = {}
        for child in self.supervisor.children.values():
            if child.metrics_port and child.kind != "prometheus":
                job = child.actor or child.kind
                targets.setdefault(job, []).append(f"{self.host}:{child.metrics_port}")
        config = self.data_dir / "prometheus.yml"
        config.write_text(render_scrape_config(targets, scrape_interval=os.environ.get(
            "SUPPORTMESH_SCRAPE_INTERVAL", "5s"), rule_files=[ALERT_RULES] if ALERT_RULES.exists() else []))
        self.supervisor.add(Child(
            name="prometheus", kind="prometheus", url=f"http://{self.host}:{self.prometheus_port}",
            argv=["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.data_dir / 'prometheus'}",
                  f"--web.listen-address={self.host}:{self.prometheus_port}", "--enable-feature=exemplar-storage"],
            env=self._env(), log_path=self.data_dir / "logs" / "prometheus.log",
        ))

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every gateway's /readyz and every actor's /readyz answer 200."""
        deadline = time.monotonic() + timeout_s
        pending = {c.name: c for c in self.supervisor.children.values() if c.kind in ("gateway", "actor", "mocks")}
        async with httpx.AsyncClient(timeout=1.0) as client:
            while pending and time.monotonic() < deadline:
                for name, child in list(pending.items()):
                    path = "/healthz" if child.kind == "mocks" else "/readyz"
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        if _serves(await client.get(f"{child.url}{path}"), child):
                            pending.pop(name)
                if pending:
                    await asyncio.sleep(0.25)
        if pending:
            raise RuntimeError(f"not ready after {timeout_s}s: {', '.join(sorted(pending))} "
                               f"(see {self.data_dir / 'logs'})")

    def write_endpoints(self, ready: bool | None = None) -> None:
        """Write `endpoints.json`: URLs, metrics targets and the PID of every process."""
        previous: dict[str, Any] = {}
        if self.endpoints_path.exists():
            with contextlib.suppress(Exception):
                previous = json.loads(self.endpoints_path.read_text())
        doc = {
            "ready": previous.get("ready", False) if ready is None else ready,
            "supervisor_pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "gateway_url": self.gateway_url,
            "gateway_urls": [f"http://{self.host}:{p}" for p in self.gateway_ports],
            "widget_url": f"{self.gateway_url}/",
            "mocks_url": self.mocks_url,
            "nats_url": self.nats_url,
            "nats_urls": [node.url for node in self.nats_nodes],
            "nats_monitor_url": self.nats.monitor_url,
            "nats_pid": self.nats.pid,
            # Every node of the cluster (one entry for a single server): chaos kills them one at a time.
            "nats_nodes": [{"name": node.server_name or "nats-server", "url": node.url,
                            "monitor_url": node.monitor_url, "pid": node.pid} for node in self.nats_nodes],
            "redis_url": self.redis_url,
            "redis_pid": self.redis.pid if self.redis else None,
            "prometheus_url": f"http://{self.host}:{self.prometheus_port}" if self.observability else None,
            "sqlite_path": str(self.data_dir / "history.db"),
            # The credential files by user (never their contents): tools and tests sign in as `operator`.
            "credentials": self.credentials.describe(),
            "logs_dir": str(self.data_dir / "logs"),
            "processes": {
                c.name: {"kind": c.kind, "actor": c.actor, "pid": c.pid, "url": c.url,
                         "metrics_url": f"http://{self.host}:{c.metrics_port}/metrics" if c.metrics_port else None,
                         "restarts": c.restarts}
                for c in self.supervisor.children.values()
            },
        }
        tmp = self.endpoints_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.endpoints_path)

    async def run(self, stop: asyncio.Event) -> None:
        """Supervise (started by `start`) until `stop` is set, then stop everything."""
        await stop.wait()
        await self.stop()

    async def _watch_servers(self) -> None:
        """Restart a nats-server (same port, same store) or redis-server when one dies, as a StatefulSet would."""
        servers = [(f"nats-server {node.server_name}".strip(), node) for node in self.nats_nodes]
        while True:
            await asyncio.sleep(0.2)
            for name, server in (*servers, ("redis-server", self.redis)):
                proc = getattr(server, "process", None)
                if server is None or proc is None or proc.poll() is None:
                    continue
                log.warning("%s exited with %s; restarting on the same store", name, proc.returncode)
                try:
                    await asyncio.to_thread(server.start)
                except Exception:
                    log.exception("could not restart %s; retrying", name)
                    await asyncio.sleep(1)
                    continue
                self.write_endpoints()

    async def stop(self) -> None:
        """Stop in order: supervision, then the gateway, actors, mocks (and Prometheus), then Redis and NATS."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.supervisor.stop(STOP_ORDER)
        if self.redis:
            self.redis.stop()
            log.info("stopped redis-server")
        for node in self.nats_nodes:
            node.stop()
        log.info("stopped nats-server" + (f" ({len(self.nats_nodes)} nodes)" if len(self.nats_nodes) > 1 else ""))
        with contextlib.suppress(Exception):
            self.write_endpoints(ready=False)


def _sync_interval(value: str) -> str:
    """argparse's check of `--sync-interval` (its reason, not argparse's "invalid value")."""
    try:
        return check_sync_interval(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh up`."""
    parser = argparse.ArgumentParser(prog="supportmesh up", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=".supportmesh", help="where NATS data, SQLite, logs go")
    parser.add_argument("--replicas", type=int, default=1, help="processes per actor")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gateway-port", type=int, default=8000)
    parser.add_argument("--mocks-port", type=int, default=8100)
    parser.add_argument("--nats-port", type=int, default=4222, help="the (first) nats-server's client port")
    parser.add_argument("--nats-cluster", type=int, default=1, metavar="N",
                        help="run N nats-servers as one JetStream cluster (3: streams and buckets with 3 replicas)")
    parser.add_argument("--redis-port", type=int, default=6379, help="ignored when SUPPORTMESH_REDIS_URL is set")
    parser.add_argument("--sync-interval", default="always", type=_sync_interval,
                        help="nats-server JetStream sync_interval: always (fsync every write, the default) or a "
                        "duration such as 2m (faster, but a crash of the machine may lose the last writes)")
    parser.add_argument("--observability", action="store_true", help="also start Prometheus")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.gateways < 1:
        parser.error("--replicas and --gateways must be at least 1")
    if args.nats_cluster not in (1, 3, 5):
        parser.error("--nats-cluster must be 1, 3 or 5 (a JetStream cluster needs an odd number of nodes)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    mesh = LocalMesh(
        Path(args.data_dir), replicas=args.replicas, host=args.host, gateway_port=args.gateway_port,
        mocks_port=args.mocks_port, nats_port=args.nats_port, nats_cluster=args.nats_cluster, redis_port=args.redis_port, gateway_replicas=args.gateways,
        sync_interval=args.sync_interval, observability=args.observability, prometheus_port=args.prometheus_port,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await mesh.start()
        except Exception:
            await mesh.stop()
            raise
        print(f"\n  supportmesh is up: open {mesh.gateway_url}/  (Ctrl-C to stop)\n"
              f"  token      supportmesh token EMAIL --data-dir {mesh.data_dir}\n"
              f"  endpoints  {mesh.endpoints_path}\n  logs       {mesh.data_dir / 'logs'}/", flush=True)
        if os.environ.get("SUPPORTMESH_API_DOCS", "").lower() in ("1", "true", "yes", "on"):
            print(f"  API docs   {mesh.gateway_url}/docs", flush=True)
        if mesh.observability:
            print(f"  Prometheus http://{mesh.host}:{mesh.prometheus_port}/", flush=True)
        await mesh.run(stop)
        print("supportmesh stopped.", flush=True)

    try:
        asyncio.run(run())
    except RuntimeError as exc:
        print(f"supportmesh up: {exc}", file=sys.stderr)
        return 1
    return 0
