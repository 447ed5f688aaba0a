"""context_retriever: the customer, their orders, the order in question and its tracking, fetched in
parallel from the commerce APIs. Never discloses an order of another customer.

A guest (`metadata.customer_verified` False: no token) is only a claim: no customer profile or order list is
read by the email they typed. A guest's one way to an order is its number and the email it was placed with
(the request's `customer_email`): the order is read by its number and used only when it carries that email;
then its status and tracking are the whole context. The session's remembered context is neither read nor
written for a guest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from actors.base import Actor, StepContext
from actors.commerce import CommerceClient
from gateway.sessions import SessionStore
from saga.protocol import GUEST_EMAIL, CustomerContext, Entities, Message
from supportmesh.config import Settings

log = logging.getLogger("supportmesh.actor.context_retriever")
RECENT_ORDERS = 5


def order_summary(order: dict[str, Any]) -> dict[str, Any]:
    """The few fields of an order a reply may mention."""
    keys = ("order_id", "status", "total", "currency", "created_at", "expected_delivery", "tracking_id")
    return {k: order.get(k) for k in keys}


class ContextRetriever(Actor):
    """Adds `payload.context` and `payload.api_data`."""

    name = "context_retriever"

    async def start(self, settings: Settings) -> None:
        self.api = CommerceClient(settings)
        self.sessions = SessionStore(settings.redis_dsn, ttl_s=settings.session_ttl_s)

    async def stop(self) -> None:
        await self.api.close()
        await self.sessions.close()

    async def _session_context(self, session_id: str) -> dict[str, Any] | None:
        try:
            return await self.sessions.get_context(session_id)
        except Exception:  # session context helps follow-ups; its absence must not fail the step
            log.warning("session context unavailable", exc_info=True)
            return None

    async def _remember(self, session_id: str, email: str, customer: dict[str, Any] | None,
                        orders: list[dict[str, Any]], order: dict[str, Any] | None,
                        previous: dict[str, Any] | None) -> None:
        """Save the session's customer context, so a follow-up can refer to this turn's order."""
        if customer is None:
            return
        with contextlib.suppress(Exception):  # a cache for follow-ups: its loss must not fail the step
            await self.sessions.set_context(session_id, {
                "customer_email": email,
                "customer_id": customer["id"],
                "recent_orders": [o["order_id"] for o in orders[:RECENT_ORDERS]],
                "last_order_id": order["order_id"] if order else (previous or {}).get("last_order_id"),
            })

    async def _guest_context(self, message: Message, ents: Entities) -> tuple[CustomerContext, dict[str, Any]]:
        """A guest's context: the order proven by its number and the email on it, else nothing."""
        email = message.payload.customer_email.lower()
        order, shipment = None, None
        notes = ["the customer is not signed in"]
        if ents.order_number and email != GUEST_EMAIL:
            found = await self.api.order(ents.order_number)
            if found is not None and str(found.get("customer_email", "")).lower() == email:
                order = order_summary(found)
                if found.get("tracking_id"):
                    shipment = await self.api.tracking(found["tracking_id"])
            else:
                # The same words whether the order does not exist or belongs to another email: nothing leaks.
                notes.append(f"order {ents.order_number} was not found for the email given")
        elif ents.order_number or ents.tracking_number:
            notes.append("a guest must give the order number and the email address the order was placed with")
        context = CustomerContext(order=order, tracking=shipment, notes=notes)
        return context, {"guest": True, "order_id": order["order_id"] if order else None,
                         "tracking_found": shipment is not None}

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        started = time.perf_counter()
        email = message.payload.customer_email
        ents = message.payload.intent.entities if message.payload.intent else Entities()
        if not message.metadata.customer_verified:
            context, found = await self._guest_context(message, ents)
            found["ms"] = round((time.perf_counter() - started) * 1000, 2)
            return {"context": context, "api_data": {**message.payload.api_data, "context_retriever": found}}

        async def nothing() -> None:
            return None

        # Everything that does not depend on another answer is asked at once. The order is looked up in the
        # customer's own orders, never fetched by id: an order of another customer is not even read, let alone
        # disclosed (and the reply cannot reveal that it exists).
        previous, customer, orders, shipment = await asyncio.gather(
            self._session_context(message.session_id),
            self.api.customer(email),
            self.api.customer_orders(email),
            self.api.tracking(ents.tracking_number) if ents.tracking_number else nothing(),
        )
        order_id = ents.order_number
        from_session = False
        if not order_id and not ents.tracking_number and previous and previous.get("customer_email") == email:
            order_id, from_session = previous.get("last_order_id"), True
        notes: list[str] = []
        by_id = {o["order_id"]: o for o in orders}
        if customer is None:
            notes.append(f"no customer account found for {email}")
        order = by_id.get(order_id) if order_id else None
        if order_id and order is None and not from_session:
            notes.append(f"order {order_id} was not found")
        if shipment is not None and shipment.get("order_id") not in by_id:
            notes.append("the tracking number was not found on this account")
            shipment = None
        if shipment is not None and order is None:
            order = by_id.get(shipment.get("order_id"))
        # The session context is saved while the order's tracking is fetched (the second and last round trip).
        remember = self._remember(message.session_id, email, customer, orders, order, previous)
        if order is not None and shipment is None and order.get("tracking_id"):
            shipment, _ = await asyncio.gather(self.api.tracking(order["tracking_id"]), remember)
        else:
            await remember

        context = CustomerContext(
            customer=customer,
            orders=[order_summary(o) for o in orders[:RECENT_ORDERS]],
            order=order,
            tracking=shipment,
            notes=notes,
        )
        api_data = {
            **message.payload.api_data,
            "context_retriever": {
                "customer_found": customer is not None,
                "orders": len(orders),
                "order_id": order["order_id"] if order else None,
                "order_from_session": from_session and order is not None,
                "tracking_found": shipment is not None,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        }
        return {"context": context, "api_data": api_data}


ACTOR = ContextRetriever
