"""Fault injection for resilience tests: latency, error rate and ambiguous failures per route
("METHOD /route/{template}"), from `SUPPORTMESH_MOCK_FAULTS` (JSON) at start and `PUT /_admin/faults` at run time.

- `error_rate`: the request fails with a 503 *before* it is handled (nothing happens).
- `fail_after_effect_rate`: the request is handled (an action is performed) and its answer is replaced by a 503,
  like a server that does the work and then times out: the client cannot tell whether the effect happened.
- `fail_first`: the first N requests on the route (counted from when the setting is applied) fail like
  `error_rate` does, for deterministic tests of "fails N times, then works"."""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Fault(BaseModel):
    """What to inject on one route."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, le=60_000)
    latency_jitter_ms: float = Field(default=0, ge=0, le=60_000)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fail_after_effect_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fail_first: int = Field(default=0, ge=0, le=1_000_000)


# What to do with one request: handle it, fail it before handling, or handle it and then fail its answer.
Verdict = Literal["pass", "fail_before", "fail_after_effect"]


class Faults:
    """The current fault settings; `default` applies to routes without their own entry."""

    def __init__(self, config: dict[str, Any] | None = None, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.set(config or {})

    @classmethod
    def from_env(cls) -> Faults:
        """Faults from `SUPPORTMESH_MOCK_FAULTS` (empty when unset)."""
        raw = os.environ.get("SUPPORTMESH_MOCK_FAULTS", "").strip()
        return cls(json.loads(raw) if raw else {})

    def set(self, config: dict[str, Any]) -> None:
        """Replace every setting (validates first: a bad setting changes nothing)."""
        parsed = {route: Fault.model_validate(value) for route, value in config.items()}
        self.by_route = parsed
        self.seen: dict[str, int] = {}  # requests per route since this setting, for `fail_first`

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {route: f.model_dump() for route, f in self.by_route.items()}

    def for_route(self, route: str) -> Fault | None:
        """The fault of a route (its own, else the default), or None."""
        return self.by_route.get(route) or self.by_route.get("default")

    async def inject(self, route: str) -> Verdict:
        """Sleep the configured latency, then say whether this request fails (before or after its effect)."""
        fault = self.for_route(route)
        if fault is None:
            return "pass"
        delay = fault.latency_ms + (self.rng.uniform(0, fault.latency_jitter_ms) if fault.latency_jitter_ms else 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        self.seen[route] = n = self.seen.get(route, 0) + 1
        if n <= fault.fail_first:
            return "fail_before"
        if fault.error_rate > 0 and self.rng.random() < fault.error_rate:
            return "fail_before"
        if fault.fail_after_effect_rate > 0 and self.rng.random() < fault.fail_after_effect_rate:
            return "fail_after_effect"
        return "pass"
