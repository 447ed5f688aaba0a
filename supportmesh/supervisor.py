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

BASE_BACKOFF_S = 0.25
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

    def note(self, text: str) -> None:
        """Append a supervisor line to the child's own log, so its log tells why it started again."""
        with open(self.log_path, "a", encoding="utf-8") as out:
            out.write(f"--- supportmesh supervisor {time.strftime('%Y-%m-%dT%H:%M:%S')}: {text} ---\n")


class Supervisor:
    """Keeps children running until `stop()`."""

    def __init__(self, on_change: Callable[[], None] | None = None, *, base_backoff_s: float = BASE_BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S, healthy_after_s: float = HEALTHY_AFTER_S) -> None:
        self.children: dict[str, Child] = {}
        self._on_change = on_change or (lambda: None)
        self._stopping = False
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.stopped: list[str] = []  # names in the order they stopped

    def backoff(self, consecutive_failures: int) -> float:
        """Delay before restarting a child that failed this many times in a row: doubling, capped."""
        return min(self.max_backoff_s, self.base_backoff_s * (2 ** max(0, consecutive_failures - 1)))

    def add(self, child: Child) -> Child:
        """Start a child and supervise it."""
        self.children[child.name] = child
        child.spawn()
        log.info("started %s (pid %s)", child.name, child.pid)
        return child

    async def run(self, poll_s: float = 0.2) -> None:
        """Restart children that exit, with exponential backoff, until `stop()` is called (or cancelled)."""
        while not self._stopping:
            if self.check():
                self._on_change()
            await asyncio.sleep(poll_s)

    def check(self, now: float | None = None) -> bool:
        """One supervision round: note exits, start what is due. True when a PID changed."""
        now = time.monotonic() if now is None else now
        changed = False
        for child in self.children.values():
            proc = child.process
            if proc is not None and proc.poll() is not None and not self._stopping:
                ran = now - child.started_at
                child.consecutive_failures = 0 if ran > self.healthy_after_s else child.consecutive_failures + 1
                delay = self.backoff(max(1, child.consecutive_failures))
                child.history.append({"event": "exited", "at": now, "code": proc.returncode,
                                      "after_s": round(ran, 2), "restart_in_s": delay})
                log.warning("%s exited with %s after %.1fs; restarting in %.2fs (failure %d in a row)",
                            child.name, proc.returncode, ran, delay, child.consecutive_failures)
                child.note(f"exited with {proc.returncode} after {ran:.1f}s; restarting in {delay:.2f}s")
                child.process = None
                child.next_start_at = now + delay
                changed = True
            if child.process is None and not self._stopping and now >= child.next_start_at:
                child.spawn()
                child.restarts += 1
                child.history.append({"event": "restarted", "at": now, "pid": child.pid or 0,
                                      "restart": child.restarts})
                log.info("restarted %s (pid %s, restart #%d)", child.name, child.pid, child.restarts)
                changed = True
        return changed

    async def stop(self, kinds_in_order: list[str], timeout_s: float = 15.0) -> None:
        """Stop children kind by kind (e.g. gateway first, then actors), each with SIGTERM then SIGKILL; a kind
        is stopped completely before the next one is signalled."""
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
                self.stopped.append(child.name)
                log.info("stopped %s", child.name)


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.process and child.process.poll() is None:
        try:
            os.kill(child.process.pid, sig)
        except ProcessLookupError:
            pass
