"""Reading a saga's server-sent events (`GET /api/chat/{message_id}/events`) over real HTTP."""

from __future__ import annotations

import json
import time

import httpx

from tests.support.identity import AUTH


def read_events(base: str, message_id: str, *, within_s: float | None = None,
                headers: dict[str, str] = AUTH) -> list[tuple[str, dict, float]]:
    """Every server-sent event of a saga, with the time it arrived, until the server closes the stream. With
    `within_s`, the stream must close within that many seconds (checked on every line, the gateway's pings
    included, so a stream left open is caught long before its idle timeout). Read as the customer `headers`
    sign in (the saga's owner: user@example.com by default)."""
    events = []
    give_up = time.monotonic() + within_s if within_s is not None else None
    with httpx.stream("GET", f"{base}/api/chat/{message_id}/events", timeout=30, headers=headers) as r:
        assert r.status_code == 200
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1]), time.time()))
            if give_up is not None and time.monotonic() > give_up:
                raise AssertionError(f"the event stream of {message_id} was still open after {within_s}s: {events}")
    return events
