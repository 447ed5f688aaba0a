"""Start and stop a local redis-server on loopback (for `supportmesh up` and the tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from supportmesh.natsserver import free_port
from supportmesh.procs import stop_process

INSTALL_HINT = "install it with: sudo apt-get install -y redis-server (or set SUPPORTMESH_REDIS_URL to an existing Redis)"


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start."""


@dataclass
class RedisServer:
    """One redis-server process with its data in `data_dir` (no persistence: session state is a cache) and its
    output in `log_path` (default `<data_dir>/redis.log`)."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    # An ACL file (supportmesh/redisauth.py); None: the default user without a password (unit tests).
    acl_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """redis:// URL of the server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the running server."""
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if not binary:
            raise RedisServerError(f"redis-server not found on PATH; {INSTALL_HINT}")
        self.port = self.port or free_port(self.host)
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = Path(self.log_path or self.data_dir / "redis.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
                 "--dir", str(self.data_dir), "--protected-mode", "yes",
                 *(["--aclfile", str(Path(self.acl_file).resolve())] if self.acl_file else [])],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1000:]
                raise RedisServerError(f"redis-server exited with {self.process.returncode}: {tail}")
            if _ping(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on {self.url} within {timeout_s}s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL."""
        stop_process(self.process, timeout_s)


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            # NOAUTH: the server is up and wants credentials (the default user is off).
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
