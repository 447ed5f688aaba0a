"""The engine's runtime wired for the support mesh: the support app, tracing and metrics hooks, the drain
time of each actor, and recovery (dead letters, the sweeper) in the error handler's process."""

from __future__ import annotations

from typing import Any

from actors import registry
from actors.app import SUPPORT
from actors.drain import step_drain_s
from config.settings import Settings
from observability.hooks import ObservabilityHooks
from saga.actor import Actor
from saga.hooks import StepHooks
from saga.recovery import Recovery
from saga.runtime import Runtime


class ActorRuntime(Runtime):
    """One actor of the mesh; with `recovery` (by default: when it is the routes' error handler) this process
    also runs recovery, which acts while it holds the mesh's recovery lease."""

    def __init__(self, actor: Actor, settings: Settings, *, recovery: bool | None = None,
                 hooks: StepHooks | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("drain_timeout_s", step_drain_s(actor.name, settings))
        super().__init__(actor, settings, SUPPORT, hooks=hooks or ObservabilityHooks(registry.names(registry.active(settings))), **kwargs)
        # By default the process of the registry's recovery actor (the routes' error handler) runs it.
        spec = registry.find(actor.name, registry.active(settings))
        default = spec.runs_recovery if spec else actor.name == SUPPORT.error_handler
        wanted = default if recovery is None else recovery
        # The lease outlives a few sweeps, so a holder that dies is replaced within about two sweep intervals.
        lease_s = max(5.0, 2 * settings.sweep_interval_s)
        self.recovery: Recovery | None = Recovery(self.core, lease_s=lease_s) if wanted else None

    async def start(self) -> None:
        """Start the actor, then recovery when this process runs it."""
        await super().start()
        if self.recovery is not None:
            await self.recovery.start()

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop recovery (handing its lease over), then the actor."""
        if self.recovery is not None:
            await self.recovery.stop()
        await super().stop(drain_timeout_s)
