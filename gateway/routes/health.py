"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from gateway.state import Gateway


def health_router(gw: Gateway) -> APIRouter:
    """`/healthz`, `/readyz` and `/metrics`."""
    settings = gw.settings
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "service": "gateway"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: NATS, the stream, Redis and SQLite are reachable."""
        checks: dict[str, str] = {}

        async def check(name: str, probe: Any) -> None:
            try:
                async with asyncio.timeout(2):
                    await probe()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {type(exc).__name__}"

        await asyncio.gather(
            check("nats", lambda: gw.nc.flush(timeout=1)),
            check("stream", lambda: gw.js.stream_info(settings.stream_name)),
            check("redis", gw.sessions.ping),
            check("sqlite", gw.history.ping),
        )
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "service": "gateway", "checks": checks}, status_code=200 if ok else 503)

    @router.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

    return router
