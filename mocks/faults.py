"""Fault injection for resilience tests: latency and error rate per route ("METHOD /route/{template}"), from
`SUPPORTMESH_MOCK_FAULTS` (JSON) at start and `PUT /_admin/faults` at run time."""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Fault(BaseModel):
    """What to inject on one route."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, le=60_000)
    latency_jitter_ms: float = Field(default=0, ge=0, le=60_000)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)


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

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {route: f.model_dump() for route, f in self.by_route.items()}

    def for_route(self, route: str) -> Fault | None:
        """The fault of a route (its own, else the default), or None."""
        return self.by_route.get(route) or self.by_route.get("default")

    async def inject(self, route: str) -> bool:
        """Sleep the configured latency; True when this request must fail with an injected error."""
        fault = self.for_route(route)
        if fault is None:
            return False
        delay = fault.latency_ms + (self.rng.uniform(0, fault.latency_jitter_ms) if fault.latency_jitter_ms else 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        return fault.error_rate > 0 and self.rng.random() < fault.error_rate
