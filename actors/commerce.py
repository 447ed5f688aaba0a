"""Client of the commerce APIs (customers, orders, tracking, actions, tickets): one shared aiohttp session per
process, kept alive. 404 is data (None); 409/422 are permanent failures; 5xx, timeouts and connection errors escape
as httpx's errors (`httpx.HTTPStatusError`, `httpx.TimeoutException`, `httpx.TransportError`: the vocabulary the
runtime's retry policy classifies), which the runtime retries. Every value put in a URL path is one escaped segment
(`segment`), so no email or id, even from a forged bus message, can reach another route.

Why aiohttp: measured against the mock APIs (`bench/http_bench.py`), a call through one shared keep-alive
`httpx.AsyncClient` cost about 3x the client CPU of one through a shared aiohttp session. uvicorn serves HTTP/1.1
only, so HTTP/2 was no option. Each call is a client span of ours (`http_client_span`): the route template, never
the path (it carries emails and ids). A test hands in an httpx transport (an in-process ASGI app) instead: the
same calls then go through httpx and its instrumentation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from actors.base import PermanentError
from config.settings import Settings
from observability.tracing import URL_TEMPLATE, http_client_attributes, inject_headers, tracer

JSON = {"Content-Type": "application/json"}


def segment(value: str) -> str:
    """One URL path segment: every reserved character escaped (`/` included); `.`, `..` and empty refused, since
    a client or proxy resolves those as dot segments of the path."""
    if value in ("", ".", ".."):
        raise PermanentError(f"{value!r} cannot be a path segment")
    return quote(value, safe="")


class CommerceClient:
    """Typed calls to the mock (or real) commerce APIs."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None, *,
                 trace_configs: list[aiohttp.TraceConfig] | None = None) -> None:
        """`transport`: send through httpx and this transport instead (tests' in-process ASGI app);
        `trace_configs`: aiohttp's request hooks (a test watching what goes on the wire)."""
        self.customers_url = settings.customers_api_url.rstrip("/")
        self.orders_url = settings.orders_api_url.rstrip("/")
        self.tracking_url = settings.tracking_api_url.rstrip("/")
        self.timeout_s = settings.api_timeout_s
        # httpx only for a transport handed in (tests' in-process ASGI app); aiohttp's session is made on first
        # use, inside the running event loop it belongs to.
        self.http = httpx.AsyncClient(
            timeout=settings.api_timeout_s, transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        ) if transport is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._trace_configs = trace_configs

    async def close(self) -> None:
        """Close the connection pool."""
        if self.http is not None:
            await self.http.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, url: str, template: str, body: dict[str, Any] | None = None,
                       headers: dict[str, str] | None = None) -> httpx.Response | _Ok:
        """One call. A refusal or failure answer is an `httpx.Response` whatever the client library, so status
        handling and error types are one code path; a success is only its status and body (cheaper)."""
        if self.http is not None:
            return await self.http.request(method, url, json=body, headers=headers,
                                           extensions={URL_TEMPLATE: template})
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30), trace_configs=self._trace_configs)
        # Our own client span (no aiohttp instrumentation: it would record the path, and costs a dependency);
        # an exception's text names the template only, and its cause is not chained (it may carry the URL).
        with tracer().start_as_current_span(f"{method} {template}", kind=SpanKind.CLIENT, record_exception=False,
                                             attributes=http_client_attributes(method, url, template)) as span:
            try:
                # encoded=True: the path goes out exactly as `segment` escaped it (yarl would unescape `%40`).
                async with self._session.request(method, URL(url, encoded=True),
                                                 data=None if body is None else orjson.dumps(body),
                                                 headers=inject_headers({**(headers or {}), **JSON})) as r:
                    status, content = r.status, await r.read()
            except (TimeoutError, asyncio.TimeoutError):
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                span.set_attribute("error.type", "timeout")
                raise httpx.ReadTimeout(f"timed out: {method} {template}",
                                        request=httpx.Request(method, url)) from None
            except aiohttp.ClientError as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise httpx.TransportError(f"{type(exc).__name__} from {method} {template}") from None
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(status))
        if 200 <= status < 300:
            return _Ok(status, content)
        return httpx.Response(status, content=content, request=httpx.Request(method, url))

    # Every call names the route template of its URL: its span carries that, never the path (emails, ids).
    async def _get(self, url: str, template: str) -> Any | None:
        r = await self._request("GET", url, template)
        if r.status_code == 404:
            return None
        _raise_for_status(r, template)
        return orjson.loads(r.content)

    async def _post(self, url: str, template: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        r = await self._request("POST", url, template, body, {"Idempotency-Key": key} if key else None)
        if r.status_code in (400, 404, 409, 422):
            raise PermanentError(f"{r.status_code} from POST {template}: {_detail(r)}")
        _raise_for_status(r, template)
        return orjson.loads(r.content)

    async def customer(self, email: str) -> dict[str, Any] | None:
        """A customer by email, or None."""
        return await self._get(f"{self.customers_url}/customers/{segment(email)}", "/customers/{email}")

    async def customer_orders(self, email: str) -> list[dict[str, Any]]:
        """A customer's orders, most recent first (empty for an unknown customer)."""
        data = await self._get(f"{self.customers_url}/customers/{segment(email)}/orders", "/customers/{email}/orders")
        return list(data.get("orders", [])) if data else []

    async def order(self, order_id: str) -> dict[str, Any] | None:
        """An order, or None."""
        return await self._get(f"{self.orders_url}/orders/{segment(order_id)}", "/orders/{order_id}")

    async def tracking(self, tracking_id: str) -> dict[str, Any] | None:
        """A shipment, or None."""
        return await self._get(f"{self.tracking_url}/tracking/{segment(tracking_id)}", "/tracking/{tracking_id}")

    async def act(self, action: str, order_id: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Perform a refund / replacement / cancellation once per idempotency key."""
        path = {"refund": "refunds", "replacement": "replacements", "cancel": "cancellation"}[action]
        return await self._post(f"{self.orders_url}/orders/{segment(order_id)}/{path}", f"/orders/{{order_id}}/{path}",
                                body, key)

    async def order_actions(self, order_id: str) -> list[dict[str, Any]]:
        """Every action performed on an order, with its idempotency key and status (empty for an unknown
        order). Recovery reads it to find effects whose answer was lost."""
        data = await self._get(f"{self.orders_url}/orders/{segment(order_id)}/actions", "/orders/{order_id}/actions")
        return list(data.get("actions", [])) if data else []

    def undo_url(self, action_id: str) -> str:
        """Where an action is undone (recorded in the saga log for compensation)."""
        return f"{self.orders_url}/actions/{segment(action_id)}/undo"

    async def undo(self, url: str) -> dict[str, Any]:
        """Undo an action (idempotent)."""
        return await self._post(url, "/actions/{action_id}/undo", {}, None)

    async def open_ticket(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Open a human handoff ticket once per key."""
        return await self._post(f"{self.customers_url}/tickets", "/tickets", body, key)


@dataclass(slots=True)
class _Ok:
    """A 2xx answer: what the callers read of it."""

    status_code: int
    content: bytes


def _detail(r: httpx.Response) -> str:
    """The API's `detail` of a refusal, short (the body of an error answer, not customer data)."""
    try:
        detail = r.json().get("detail", "")
    except Exception:
        detail = r.text
    return str(detail)[:300]


def _raise_for_status(r: httpx.Response | _Ok, template: str) -> None:
    """httpx's error for a 4xx/5xx, with the route template in its message instead of the URL (the message is
    logged, recorded on spans and in the saga log)."""
    if 200 <= r.status_code < 300:
        return
    assert isinstance(r, httpx.Response)
    raise httpx.HTTPStatusError(f"{r.status_code} {r.reason_phrase} from {r.request.method} {template}",
                                request=r.request, response=r)
