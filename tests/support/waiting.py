"""Waiting for a condition with a deadline, never a fixed sleep (machines differ threefold in speed)."""

from __future__ import annotations

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
