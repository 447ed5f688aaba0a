"""Waiting for a condition with a deadline, never a fixed sleep (machines differ threefold in speed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "a condition",
             poll_s: float = 0.2) -> Any:
    """Until `condition()` returns something truthy (returned), or fail saying `what` never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s}s"
        time.sleep(poll_s)


async def cancel_until_done(tasks: list[asyncio.Task[Any]], timeout_s: float = 30.0) -> None:
    """Cancel `tasks` and wait until each has ended, cancelling again what is still running. A cancellation can
    land inside nats-py's requests, which await `asyncio.wait_for`: on Python 3.11 that swallows a cancellation
    arriving just as its reply does (CPython gh-86296), and the task runs on. Fails if one never ends."""
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        assert time.monotonic() < deadline, f"{len(pending)} cancelled task(s) kept running for {timeout_s}s"
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
