"""Crash points: `SUPPORTMESH_CRASH_POINT=<actor>:<point>` makes the process die right there (like kill -9: no
cleanup, no ack) on the first attempt — or on every attempt with `<actor>:<point>:always` — to prove what the
saga log recovers. Points: before_handler, after_handler, after_step_completed."""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("saga.runtime")

CRASH_POINT_ENV = "SUPPORTMESH_CRASH_POINT"


@functools.cache
def _wanted() -> str | None:
    # Read once: crash points are set in a process's environment when it is started, and three of them are
    # passed at every step.
    return os.environ.get(CRASH_POINT_ENV)


def crash_point(actor: str, point: str, attempt: int) -> None:
    """Exit the process (status 137) when the environment it was started with asks for a crash here."""
    wanted = _wanted()
    if wanted and (wanted == f"{actor}:{point}:always" or (wanted == f"{actor}:{point}" and attempt == 1)):
        log.error("crash point %s reached: exiting", wanted, extra={"actor": actor})
        os._exit(137)
