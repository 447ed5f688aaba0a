"""The widget embedded in a shop's own pages (another origin): the allow-list of SUPPORTMESH_ALLOWED_ORIGINS (CORS and
frame-ancestors), and the one `<script>` tag in a real browser (headless Debian Chromium driven by Playwright).

Three origins on loopback: the gateway's, the shop's (allowed) and a stranger's (not), each its own port: the two
pages are served by small `http.server` threads whose ports are taken before the mesh starts, so the shop's origin
is in the mesh's environment from the beginning."""

from __future__ import annotations

import asyncio
import functools
import http.server
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

# The widget's browser (headless Debian Chromium) is the `browser` fixture of this folder's conftest.py.
from tests.support.browser import ARTIFACTS

SHOP_EMAIL = "user@example.com"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type,prefer,x-session-id"}
EMBED_TAG = ('<script src="{gateway}/static/embed.js" data-gateway="{gateway}" data-token="{token}" defer>'
             "</script>")


class Site:
    """A static site on a free loopback port (its own origin), serving `root`."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(Quiet, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Site:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """The shop's site (on the allow-list) and a stranger's (not on it), serving the same pages."""
    root = tmp_path_factory.mktemp("shop")
    shop, stranger = Site(root).start(), Site(root).start()
    try:
        yield root, shop, stranger
    finally:
        shop.stop()
        stranger.stop()


@pytest.fixture(scope="module")
def embed_mesh(tmp_path_factory, sites):
    """A mesh of one gateway that lets the shop's origin embed the widget (a dedicated mesh: the session's
    `mesh` keeps the default, same origin only, which tests/system/test_identity.py checks). The customers' chat limit is
    low so a 429 is reached in a few messages."""
    from tests.support.mesh import Mesh

    _, shop, _ = sites
    m = Mesh(tmp_path_factory.mktemp("embed-mesh"), env={
        "SUPPORTMESH_ALLOWED_ORIGINS": shop.origin, "SUPPORTMESH_RATE_LIMIT_CHAT_CUSTOMER": "2/minute"}).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def pages(sites, embed_mesh):
    """The shop's page: nothing but the one tag, with a token the shop's backend minted with the shared key."""
    root, _, _ = sites
    tag = EMBED_TAG.format(gateway=embed_mesh.gateway_url, token=embed_mesh.token(SHOP_EMAIL))
    (root / "shop.html").write_text(f"<!doctype html>\n<html><head><title>A shop</title>\n{tag}\n</head>"
                                    "<body><h1>A shop</h1></body></html>\n")
    return root


def chat_responses(mesh) -> float:
    """How many answers the (only) gateway gave to `POST /api/chat` so far (its metrics)."""
    text = httpx.get(f"{mesh.endpoints['gateway_urls'][0]}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r'^supportmesh_gateway_responses_total\{[^}]*route="/api/chat"[^}]*\} (\S+)$',
                                            text, re.M))


# ---- in a browser --------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.integration
def test_the_widget_in_a_shops_page_chats_through_the_gateway(browser, sites, embed_mesh, pages) -> None:
    _, shop, _ = sites
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(f"{shop.origin}/shop.html")
        embed = page.get_by_test_id("supportmesh-embed")
        embed.get_by_test_id("message-input").wait_for(timeout=15_000)
        with page.expect_response(lambda r: r.url.endswith("/api/chat") and r.request.method == "POST") as posted:
            embed.get_by_test_id("message-input").fill("Where is my order 12345?")
            embed.get_by_test_id("send-button").click()
        assert posted.value.status == 202  # a cross-origin request, let through: the browser saw the CORS headers
        assert posted.value.request.headers["authorization"].startswith("Bearer ")
        reply = embed.get_by_test_id("agent-message").last
        reply.wait_for(timeout=30_000)
        assert "12345" in reply.inner_text()
        assert reply.get_by_test_id("status-badge").inner_text().lower() == "resolved"
        assert embed.get_by_test_id("error").is_hidden()
        assert reply.locator("a").count() == 0  # no timeline or trace of the mesh's internals in a shop's page
        # The chat lives in its own shadow root: the shop's document holds the host element only.
        assert page.evaluate("() => document.querySelectorAll('[data-testid=agent-message]').length") == 0
        assert dialogs == []
        page.screenshot(path=str(ARTIFACTS / "embed-shop.png"), full_page=True)
    finally:
        context.close()


@pytest.mark.e2e
@pytest.mark.integration
def test_a_page_of_an_origin_not_on_the_list_is_refused(browser, sites, embed_mesh, pages) -> None:
    _, _, stranger = sites
    before = chat_responses(embed_mesh)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{stranger.origin}/shop.html")
        error = page.get_by_test_id("supportmesh-embed").get_by_test_id("error")
        error.wait_for(state="visible", timeout=15_000)
        assert "Cannot reach the support service" in error.inner_text()
        # The page sends the chat itself, with the customer's token: the browser refuses it (the gateway's answer
        # to the preflight allows no such origin), so the request never leaves.
        refused = page.evaluate("""async ([gateway, token]) => {
            try {
              const r = await fetch(`${gateway}/api/chat`, { method: "POST", headers: {
                "Content-Type": "application/json", Prefer: "respond-async", Authorization: `Bearer ${token}` },
                body: JSON.stringify({ session_id: "stranger-session", message: "Where is my order 12345?" }) });
              return `answered ${r.status}`;
            } catch (err) { return `refused: ${err.name}`; }
        }""", [embed_mesh.gateway_url, embed_mesh.token(SHOP_EMAIL)])
        assert refused == "refused: TypeError"
        page.screenshot(path=str(ARTIFACTS / "embed-refused.png"), full_page=True)
    finally:
        context.close()
    assert chat_responses(embed_mesh) == before  # no chat reached the gateway: no saga was started
    r = httpx.options(f"{embed_mesh.gateway_url}/api/chat", headers={"Origin": stranger.origin, **PREFLIGHT},
                      timeout=10)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


# ---- over plain HTTP -----------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.integration
def test_preflights_and_errors_carry_cors_headers_for_the_shop_only(sites, embed_mesh) -> None:
    _, shop, stranger = sites
    url = f"{embed_mesh.gateway_url}/api/chat"
    r = httpx.options(url, headers={"Origin": shop.origin, **PREFLIGHT}, timeout=10)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == shop.origin
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "prefer", "x-session-id", "idempotency-key"} <= allowed
    assert set(r.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {"GET", "POST", "OPTIONS"}
    assert "access-control-allow-credentials" not in r.headers  # tokens travel in a header, never in a cookie
    assert int(r.headers["access-control-max-age"]) > 0

    # Every answer to the shop names it, errors included (the embedded widget reads them); none to a stranger.
    bad_token = {"Authorization": "Bearer not-a-token", "Prefer": "respond-async"}
    body = {"session_id": "embed-errors", "message": "hello"}
    for origin, expected in ((shop.origin, shop.origin), (stranger.origin, None)):
        r = httpx.post(url, json=body, headers={"Origin": origin, **bad_token}, timeout=10)
        assert r.status_code == 401
        assert r.headers.get("access-control-allow-origin") == expected
    jane = {**embed_mesh.auth("jane.smith@example.com"), "Origin": shop.origin, "Prefer": "respond-async"}
    statuses = []
    for i in range(5):  # the limit is 2/minute per customer
        r = httpx.post(url, json={"session_id": f"embed-limit-{i}", "message": "hello"}, headers=jane, timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429, statuses
    assert r.headers["access-control-allow-origin"] == shop.origin
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()


@pytest.mark.e2e
@pytest.mark.integration
def test_the_gateways_pages_may_be_framed_by_the_shop_only(sites, embed_mesh) -> None:
    _, shop, _ = sites
    r = httpx.get(f"{embed_mesh.gateway_url}/", timeout=10)
    csp = r.headers["content-security-policy"]
    assert f"frame-ancestors 'self' {shop.origin}" in csp
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "x-frame-options" not in r.headers  # it cannot name a list; frame-ancestors says it
    embed = httpx.get(f"{embed_mesh.gateway_url}/static/embed.js", headers={"Origin": shop.origin}, timeout=10)
    assert embed.status_code == 200 and "attachShadow" in embed.text


def headers_of(allowed_origins: str) -> httpx.Headers:
    """The headers of a page of an in-process gateway with `allowed_origins` (no server needed for a page)."""
    from gateway.app import create_app
    from supportmesh.config import Settings

    async def get() -> httpx.Headers:
        app = create_app(Settings(allowed_origins=allowed_origins))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return (await client.get("/healthz")).headers

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API may hold this thread's event loop
        return pool.submit(asyncio.run, get()).result(timeout=60)


def test_frame_ancestors_follow_the_allow_list() -> None:
    alone = headers_of("")
    assert "frame-ancestors 'none'" in alone["content-security-policy"] and alone["x-frame-options"] == "DENY"
    shops = headers_of("https://shop.example, http://127.0.0.1:8080")
    assert "frame-ancestors 'self' https://shop.example http://127.0.0.1:8080" in shops["content-security-policy"]
    assert "x-frame-options" not in shops


@pytest.mark.parametrize("value", ["*", "https://*.shop.example", "https://shop.example, *"])
def test_settings_refuse_a_wildcard(value: str) -> None:
    from pydantic import ValidationError

    from supportmesh.config import Settings

    with pytest.raises(ValidationError, match="no wildcard"):
        Settings(allowed_origins=value)


@pytest.mark.parametrize("value", ["shop.example", "https://shop.example/", "https://shop.example/widget",
                                   "ftp://shop.example", "https://shop.example?x", "https://user@shop.example"])
def test_settings_refuse_what_is_not_an_origin(value: str) -> None:
    from pydantic import ValidationError

    from supportmesh.config import Settings

    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(allowed_origins=value)


def test_settings_read_origins_as_browsers_send_them() -> None:
    from supportmesh.config import Settings

    settings = Settings(allowed_origins=" https://Shop.Example:443 ,http://127.0.0.1:8080,, https://shop.example")
    assert settings.allowed_origin_list == ["https://shop.example", "http://127.0.0.1:8080"]
    assert Settings().allowed_origin_list == []
