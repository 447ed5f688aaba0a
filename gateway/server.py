"""`supportmesh gateway`: run the HTTP gateway with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from config.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh gateway`."""
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="supportmesh gateway", description=__doc__)
    parser.add_argument("--host", default=settings.gateway_host)
    parser.add_argument("--port", type=int, default=settings.gateway_port)
    args = parser.parse_args(argv)

    from gateway.app import create_app
    from observability.gctune import tune_gc
    from observability.logs import setup_logging
    from observability.tracing import setup_tracing

    setup_logging("gateway", settings.log_level)
    setup_tracing("supportmesh-gateway")
    app = create_app(settings)
    tune_gc()  # every module is imported: what exists now lives as long as the process
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
