"""A private Docker engine for tests: Debian's `dockerd`, started by hand in a temporary folder, kept off the
host's networking (no iptables rules, no bridge: containers use `--network host`), stopped by its PID.

Nothing is pulled (no registry is reachable): images are imported or built locally (tests/support/docker_images.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

# The client that ships with Debian's docker.io (its API matches the daemon), else any on PATH. The legacy
# builder: a newer client would hand `build` to BuildKit/buildx, which the package does not bring.
CLIENT_PATHS = "/usr/bin:/bin"
CLIENT_ENV = {"DOCKER_BUILDKIT": "0"}


def unavailable_reason() -> str | None:
    """Why no engine can start here (None when one can): the daemon needs root and Debian's packages."""
    if os.geteuid() != 0:
        return "dockerd needs root (run as root, or in CI, which does)"
    missing = [tool for tool in ("dockerd", "containerd", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing or not (shutil.which("docker", path=CLIENT_PATHS) or shutil.which("docker")):
        return (f"missing {', '.join(missing) or 'docker'} (Debian packages docker.io containerd runc debootstrap; "
                "`make test` installs them: scripts/system-deps.sh test)")
    return None


class EngineError(RuntimeError):
    """The engine did not start, or a docker command failed."""


class DockerEngine:
    """One dockerd with its own data root, exec root and socket under `root` (short: a unix socket path is
    limited to 108 bytes), and the `docker` client pointed at it."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="smdocker-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.client = shutil.which("docker", path=CLIENT_PATHS) or shutil.which("docker") or "docker"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of a `docker` client using this engine."""
        return {**os.environ, **CLIENT_ENV, "DOCKER_HOST": f"unix://{self.socket}"}

    def start(self, timeout_s: float = 60.0) -> DockerEngine:
        """Start dockerd and wait until it answers."""
        argv = ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
                f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'dockerd.pid'}", f"--host=unix://{self.socket}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited with {self.process.returncode}: {self.log_tail()}")
            if self.socket.exists() and self.run("version", check=False, timeout=10).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise EngineError(f"dockerd did not answer within {timeout_s}s: {self.log_tail()}")

    def run(self, *args: str, check: bool = True, timeout: float = 120.0,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS` against this engine; with `check`, raise EngineError with its output on failure."""
        out = subprocess.run([self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                             stdin=stdin)
        if check and out.returncode != 0:
            raise EngineError(f"docker {' '.join(args[:4])} failed ({out.returncode}): "
                              f"{(out.stderr or out.stdout).strip()[-3000:]}")
        return out

    def log_tail(self, chars: int = 3000) -> str:
        """The end of dockerd's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """Remove every container, stop dockerd by its PID (SIGTERM, then SIGKILL; its containerd too), unmount
        what it leaves under the exec and data roots (the `netns/default` bind mount, overlays) and delete
        the folder."""
        if self.process and self.process.poll() is None:
            ids = self.run("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.run("rm", "-f", *ids, check=False, timeout=60)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._kill_own_containerd()
        for mount in reversed(mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        if not mounts_under(self.root):  # never delete through a live mount
            # rm -rf: faster than shutil.rmtree on a gigabyte of image layers; never crosses into a mount.
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], capture_output=True, timeout=300)

    def _kill_own_containerd(self) -> None:
        """dockerd stops the containerd it started; after a SIGKILL that one would linger."""
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.root).encode() in cmdline:  # ours, not a reused PID
            os.kill(pid, signal.SIGKILL)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, outermost first (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len)
