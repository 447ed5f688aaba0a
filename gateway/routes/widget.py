"""What the widget needs: its config, the local demo's sign-in, and the pages and static files it is made of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from config.settings import Settings
from gateway.auth import mint_token
from gateway.schemas import DemoSignIn

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
# How long clients (the widget, `supportmesh chat`) follow a message before giving up with its id: longer than
# recovery takes (redeliveries, the sweeper) on a healthy mesh, short enough that nobody waits forever.
FOLLOW_TIMEOUT_S = 180.0


def config_router(settings: Settings) -> APIRouter:
    """`/api/config`, and the demo sign-in when SUPPORTMESH_DEMO_SIGN_IN is on."""
    router = APIRouter()

    @router.get("/api/config")
    async def config() -> dict[str, Any]:
        """What the widget needs to know."""
        return {
            "jaeger_ui_url": settings.jaeger_ui_url,
            "chat_deadline_s": settings.chat_deadline_s,
            "follow_timeout_s": FOLLOW_TIMEOUT_S,
            "demo_sign_in": settings.demo_sign_in,
        }

    if settings.demo_sign_in:
        from mocks.data import build_seed

        demo_customers = {c["email"]: c for c in build_seed()["customers"].values()}

        @router.get("/api/demo/customers")
        async def demo_customers_list() -> dict[str, Any]:
            """The seeded demo customers one may sign in as (local demo only: SUPPORTMESH_DEMO_SIGN_IN)."""
            return {"customers": [{"email": c["email"], "name": c["name"]} for c in demo_customers.values()]}

        @router.post("/api/demo/sign-in")
        async def demo_sign_in(body: DemoSignIn) -> dict[str, Any]:
            """A short-lived token for a seeded demo customer (local demo only: SUPPORTMESH_DEMO_SIGN_IN)."""
            customer = demo_customers.get(body.email.lower())
            if customer is None:
                raise HTTPException(404, "not a demo customer")
            if not settings.auth_secret:
                raise HTTPException(503, "this gateway has no auth secret: it cannot sign anyone in")
            token = mint_token(settings.auth_secret, customer["email"], settings.demo_token_ttl_s)
            return {"token": token, "email": customer["email"], "name": customer["name"],
                    "expires_in": settings.demo_token_ttl_s}

    return router


def pages_router(web_dir: Path) -> APIRouter:
    """The widget's, the saga timeline's and the agents' console's pages (not part of the API docs)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    @router.get("/widget.html", include_in_schema=False)
    async def widget() -> FileResponse:
        return FileResponse(web_dir / "widget.html")

    @router.get("/console", include_in_schema=False)
    @router.get("/console.html", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(web_dir / "console.html")

    @router.get("/saga.html", include_in_schema=False)
    async def saga_page() -> FileResponse:
        return FileResponse(web_dir / "saga.html")

    return router


def mount_static(app: FastAPI, web_dir: Path) -> None:
    """Serve `web_dir/static` under /static, when there is one."""
    if (web_dir / "static").is_dir():
        app.mount("/static", StaticFiles(directory=web_dir / "static"), name="static")
