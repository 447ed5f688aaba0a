"""The whole mesh as a test fixture: `supportmesh up` in a subprocess (the same code a user runs), on free
loopback ports, in a temporary folder; URLs and PIDs read from its endpoints.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support import REPO

# The suite's loads all come from one address (the chaos suite sends 300 chats at concurrency 20, end-to-end tests
# poll reads and open streams): limits far above them, so only the rate-limit tests (which set their own) meet
# one. The defaults are a real deployment's (config/settings.py).
LOAD_LIMITS = {"rate_limit_chat_address": "100000/minute", "rate_limit_chat_customer": "100000/minute",
               "rate_limit_reads": "1000000/minute", "max_streams_per_customer": 10000}
LOAD_LIMITS_ENV = {f"SUPPORTMESH_{name.upper()}": str(value) for name, value in LOAD_LIMITS.items()}


class Mesh:
    """A running local mesh."""

    def __init__(self, data_dir: Path, *, replicas: int = 1, gateways: int = 1, observability: bool = False,
                 env: dict[str, str] | None = None, nats_cluster: int = 1) -> None:
        self.data_dir = data_dir
        self.replicas = replicas
        self.nats_cluster = nats_cluster
        self.gateways = gateways
        self.observability = observability
        # The mesh verifies tokens with the test secret (tests/support/identity.py) unless told otherwise; an empty value
        # makes `supportmesh up` use (or create) the one in the data dir.
        from tests.support.identity import TEST_SECRET

        self.env = {"SUPPORTMESH_AUTH_SECRET": TEST_SECRET, **LOAD_LIMITS_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 150.0) -> Mesh:
        """Start `supportmesh up` and wait until it reports ready."""
        return self.launch().wait_ready(timeout_s)

    def launch(self) -> Mesh:
        """Start `supportmesh up` without waiting for it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "supportmesh.cli", "up", "--data-dir", str(self.data_dir),
                "--replicas", str(self.replicas), "--gateways", str(self.gateways), "--gateway-port", "0",
                "--mocks-port", "0", "--nats-port", "0", "--redis-port", "0", "--prometheus-port", "0"]
        if self.observability:
            argv.append("--observability")
        if self.nats_cluster > 1:
            argv += ["--nats-cluster", str(self.nats_cluster)]
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        env.pop("SUPPORTMESH_REDIS_URL", None)
        with open(self.data_dir / "up.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 150.0) -> Mesh:
        """Wait until endpoints.json says ready (stopping everything if it never does)."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"supportmesh up exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.endpoints_path.exists():
                try:
                    if json.loads(self.endpoints_path.read_text()).get("ready"):
                        return self
                except json.JSONDecodeError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mesh not ready after {timeout_s}s:\n{self.log_tail()}")

    def pids(self) -> dict[str, int]:
        """Every process of the mesh by name (children, nats-server, redis-server), from endpoints.json."""
        ep = self.endpoints
        pids = {name: p["pid"] for name, p in ep["processes"].items() if p.get("pid")}
        pids.update({name: ep[key] for name, key in (("nats-server", "nats_pid"), ("redis-server", "redis_pid"))
                     if ep.get(key)})
        if len(ep.get("nats_nodes", [])) > 1:  # a cluster: every node by name
            pids.update({f"nats-{node['name']}": node["pid"] for node in ep["nats_nodes"] if node.get("pid")})
        return pids

    @property
    def endpoints_path(self) -> Path:
        return self.data_dir / "endpoints.json"

    @property
    def endpoints(self) -> dict[str, Any]:
        """The current endpoints.json (PIDs change when the supervisor restarts a process)."""
        return json.loads(self.endpoints_path.read_text())

    @property
    def gateway_url(self) -> str:
        return self.endpoints["gateway_url"]

    @property
    def mocks_url(self) -> str:
        return self.endpoints["mocks_url"]

    @property
    def auth_secret(self) -> str:
        """The secret the mesh's gateways verify tokens with."""
        from gateway.auth import read_secret

        return self.env.get("SUPPORTMESH_AUTH_SECRET") or read_secret(self.data_dir) or ""

    def token(self, email: str = "user@example.com") -> str:
        """A token of the customer `email` that this mesh accepts."""
        from tests.support.identity import token

        return token(email, secret=self.auth_secret)

    def auth(self, email: str = "user@example.com") -> dict[str, str]:
        """The `Authorization` header of the signed-in customer `email`, for this mesh."""
        return {"Authorization": f"Bearer {self.token(email)}"}

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the runner's log and of the logs of processes that wrote errors."""
        out = []
        up_log = self.data_dir / "up.log"
        if up_log.exists():
            out.append(up_log.read_text(errors="replace")[-chars:])
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM the runner (it stops everything in order); SIGKILL stragglers by PID."""
        pids: list[int] = []
        if self.endpoints_path.exists():
            try:
                pids = list(self.pids().values())
            except Exception:
                pids = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
