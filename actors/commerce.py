"""Client of the commerce APIs (customers, orders, tracking, actions, tickets): one shared
`httpx.AsyncClient` per process. 404 is data (None); 409/422 are permanent failures; 5xx, timeouts and
connection errors escape as httpx errors, which the runtime retries. Every value put in a URL path is one
escaped segment (`segment`), so no email or id, even from a forged bus message, can reach another route."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from actors.base import PermanentError
from config.settings import Settings
from observability.tracing import URL_TEMPLATE


def segment(value: str) -> str:
    """One URL path segment: every reserved character escaped (`/` included); `.`, `..` and empty refused, since
    a client or proxy resolves those as dot segments of the path."""
    if value in ("", ".", ".."):
        raise PermanentError(f"{value!r} cannot be a path segment")
    return quote(value, safe="")


class CommerceClient:
    """Typed calls to the mock (or real) commerce APIs."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.customers_url = settings.customers_api_url.rstrip("/")
        self.orders_url = settings.orders_api_url.rstrip("/")
        self.tracking_url = settings.tracking_api_url.rstrip("/")
        self.http = httpx.AsyncClient(
            timeout=settings.api_timeout_s, transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    # Every call names the route template of its URL: its span carries that, never the path (emails, ids).
    async def _get(self, url: str, template: str) -> Any | None:
        r = await self.http.get(url, extensions={URL_TEMPLATE: template})
        if r.status_code == 404:
            return None
        _raise_for_status(r, template)
        return r.json()

    async def _post(self, url: str, template: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        r = await self.http.post(url, json=body, headers={"Idempotency-Key": key} if key else None,
                                 extensions={URL_TEMPLATE: template})
        if r.status_code in (400, 404, 409, 422):
            raise PermanentError(f"{r.status_code} from {r.request.method} {template}: {_detail(r)}")
        _raise_for_status(r, template)
        return r.json()

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


def _detail(r: httpx.Response) -> str:
    """The API's `detail` of a refusal, short (the body of an error answer, not customer data)."""
    try:
        detail = r.json().get("detail", "")
    except Exception:
        detail = r.text
    return str(detail)[:300]


def _raise_for_status(r: httpx.Response, template: str) -> None:
    """httpx's error for a 4xx/5xx, with the route template in its message instead of the URL (the message is
    logged, recorded on spans and in the saga log)."""
    if r.is_success:
        return
    raise httpx.HTTPStatusError(f"{r.status_code} {r.reason_phrase} from {r.request.method} {template}",
                                request=r.request, response=r)
