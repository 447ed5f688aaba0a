"""`supportmesh mocks` / `python -m mocks.server`: run the mock commerce APIs."""

from __future__ import annotations

import argparse

import uvicorn


def main(argv: list[str] | None = None) -> int:
    """Entry point: serve the mock APIs with uvicorn."""
    parser = argparse.ArgumentParser(prog="supportmesh mocks", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    from mocks.app import create_app
    from observability.gctune import tune_gc
    from observability.logs import setup_logging
    from observability.tracing import setup_tracing

    setup_logging("mocks")
    setup_tracing("supportmesh-mocks")
    app = create_app()
    tune_gc()  # every module is imported: what exists now lives as long as the process
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False, loop="uvloop",
                http="httptools")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
