"""Run one actor process: `supportmesh actor <name>` or `python -m actors <name>`.

`<name>` is an actor of the registry (actors/registry.py: its module exports the class as `ACTOR`), or
`module:Class` for an actor defined elsewhere (the runtime demo and the tests use that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys

from actors import registry
from actors.base import Actor
from config.settings import Settings, get_settings
from observability.gctune import tune_gc

log = logging.getLogger("supportmesh.actor")


def load_actor(spec: str) -> type[Actor]:
    """The actor class for a registered name (`sentiment_analyzer`) or a `module:Class` reference."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
    else:
        entry = registry.find(spec)
        if entry is None:
            raise SystemExit(f"supportmesh actor: unknown actor {spec!r} (registered: {', '.join(registry.names())})")
        cls = getattr(importlib.import_module(entry.module_name), "ACTOR", None)
        if cls is None:
            raise SystemExit(f"supportmesh actor: module {entry.module_name} exports no ACTOR")
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise SystemExit(f"supportmesh actor: {spec!r} is not an Actor class")
    return cls


async def run_actor(spec: str, settings: Settings, *, concurrency: int | None = None,
                    recovery: bool | None = None) -> None:
    """Run an actor until SIGTERM/SIGINT, then stop gracefully (finish in-flight steps, drain). Recovery runs
    in the error handler's process unless `recovery` says otherwise."""
    from actors.runtime import ActorRuntime

    actor = load_actor(spec)()
    runtime = ActorRuntime(actor, settings, concurrency=concurrency, recovery=recovery)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, runtime.request_stop)
    _start_observability(actor.name, settings, lambda: runtime.ready)
    await runtime.run_until_stopped(on_started=tune_gc)


def _start_observability(name: str, settings: Settings, ready) -> None:  # type: ignore[no-untyped-def]
    from observability.logs import setup_logging
    from observability.tracing import setup_tracing

    setup_logging(name, settings.log_level)
    setup_tracing(f"supportmesh-{name.replace('_', '-')}")
    from observability.tracing import instrument_httpx

    instrument_httpx()
    try:
        from observability.metrics_server import start_metrics_server
    except ImportError:  # the metrics server module is optional until observability lands
        return
    port = start_metrics_server(settings.metrics_port, host=settings.metrics_host, ready=ready, service=name)
    log.info("metrics on %s:%s", settings.metrics_host, port, extra={"actor": name})


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh actor`."""
    parser = argparse.ArgumentParser(prog="supportmesh actor", description=__doc__)
    parser.add_argument("name", help="actor name (e.g. sentiment_analyzer) or module:Class")
    parser.add_argument("--concurrency", type=int, default=None, help="steps in flight in this process")
    parser.add_argument("--recovery", action=argparse.BooleanOptionalAction, default=None,
                        help="also run recovery (dead letters, sweeper); default: in the error handler's process, "
                             "or when SUPPORTMESH_RECOVERY=1")
    args = parser.parse_args(argv)
    recovery = args.recovery
    if recovery is None and os.environ.get("SUPPORTMESH_RECOVERY"):
        recovery = os.environ["SUPPORTMESH_RECOVERY"] not in ("0", "false", "")
    settings = get_settings()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run_actor(args.name, settings, concurrency=args.concurrency, recovery=recovery))
    return 0


if __name__ == "__main__":
    sys.exit(main())
