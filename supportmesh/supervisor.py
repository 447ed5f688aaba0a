"""A small process supervisor: start child processes, restart the ones that die (with backoff, as
Kubernetes would), stop them in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("supportmesh.supervisor")

MAX_BACKOFF_S = 10.0
HEALTHY_AFTER_S = 30.0  # a process that ran this long is considered healthy again (backoff resets)


@dataclass
class Child:
    """One supervised process."""

    name: str
    kind: str  # "actor", "gateway", "mocks", "prometheus"
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    metrics_port: int | None = None
    url: str | None = None
    actor: str | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0
    consecutive_failures: int = 0
    history: list[dict[str, float | int | str]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None while it is down."""
        return self.process.pid if self.process and self.process.poll() is None else None

    def spawn(self) -> None:
        """Start the process (its output appended to its log file)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started_at = time.monotonic()


class Supervisor:
    """Keeps children running until `stop()`."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.children: dict[str, Child] = {}
        self._on_change = on_change or (lambda: None)
        self._stopping = False

    def add(self, child: Child) -> Child:
        """Start a child and supervise it."""
        self.children[child.name] = child
        child.spawn()
        log.info("started %s (pid %s)", child.name, child.pid)
        return child

    async def run(self, poll_s: float = 0.2) -> None:
        """Restart children that exit, with exponential backoff, until `stop()` is called."""
        while not self._stopping:
            now = time.monotonic()
            changed = False
            for child in self.children.values():
                proc = child.process
                if proc is not None and proc.poll() is not None and not self._stopping:
                    ran = now - child.started_at
                    child.consecutive_failures = 0 if ran > HEALTHY_AFTER_S else child.consecutive_failures + 1
                    delay = min(MAX_BACKOFF_S, 0.25 * (2 ** max(0, child.consecutive_failures - 1)))
                    child.history.append({"event": "exited", "code": proc.returncode, "after_s": round(ran, 2)})
                    log.warning("%s exited with %s after %.1fs; restarting in %.2fs",
                                child.name, proc.returncode, ran, delay)
                    child.process = None
                    child.next_start_at = now + delay
                    changed = True
                if child.process is None and not self._stopping and now >= child.next_start_at:
                    child.spawn()
                    child.restarts += 1
                    log.info("restarted %s (pid %s, restart #%d)", child.name, child.pid, child.restarts)
                    changed = True
            if changed:
                self._on_change()
            await asyncio.sleep(poll_s)

    async def stop(self, kinds_in_order: list[str], timeout_s: float = 15.0) -> None:
        """Stop children kind by kind (e.g. gateway first, then actors), each with SIGTERM then SIGKILL."""
        self._stopping = True
        for kind in kinds_in_order:
            batch = [c for c in self.children.values() if c.kind == kind and c.pid]
            for child in batch:
                _signal(child, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for child in batch:
                while child.process and child.process.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if child.process and child.process.poll() is None:
                    log.warning("%s did not stop in %.0fs: killing", child.name, timeout_s)
                    _signal(child, signal.SIGKILL)
                    child.process.wait(timeout=5)


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.process and child.process.poll() is None:
        try:
            os.kill(child.process.pid, sig)
        except ProcessLookupError:
            pass
