"""In-memory state of the mock APIs: seed data, side effects with idempotency keys, and their undo."""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import UTC, datetime
from typing import Any

from mocks.data import build_seed


class Conflict(Exception):
    """A business rule or idempotency conflict (HTTP 409)."""


class NotFound(Exception):
    """Unknown record (HTTP 404)."""


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class Store:
    """Customers, orders, tracking, actions and tickets. One asyncio lock serializes mutations."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to the seed data, with no actions and no tickets."""
        seed = build_seed()
        self.customers: dict[str, dict[str, Any]] = seed["customers"]
        self.orders: dict[str, dict[str, Any]] = seed["orders"]
        self.tracking: dict[str, dict[str, Any]] = seed["tracking"]
        self.actions: dict[str, dict[str, Any]] = {}
        self.actions_by_key: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.tickets: dict[str, dict[str, Any]] = {}
        self.tickets_by_key: dict[str, dict[str, Any]] = {}

    # ---- reads ----------------------------------------------------------------------------------

    def customer(self, email: str) -> dict[str, Any]:
        """A customer by email."""
        c = self.customers.get(email.lower())
        if c is None:
            raise NotFound(f"no customer with email {email}")
        return c

    def customer_orders(self, email: str) -> list[dict[str, Any]]:
        """A customer's orders, most recent first."""
        customer = self.customer(email)
        mine = [o for o in self.orders.values() if o["customer_id"] == customer["id"]]
        return sorted(mine, key=lambda o: o["created_at"], reverse=True)

    def order(self, order_id: str) -> dict[str, Any]:
        """An order by id."""
        o = self.orders.get(order_id)
        if o is None:
            raise NotFound(f"no order {order_id}")
        return o

    def track(self, tracking_id: str) -> dict[str, Any]:
        """A shipment by tracking id."""
        t = self.tracking.get(tracking_id.upper())
        if t is None:
            raise NotFound(f"no shipment with tracking id {tracking_id}")
        return t

    def order_actions(self, order_id: str) -> list[dict[str, Any]]:
        """Every effect on an order, with its idempotency key and status."""
        self.order(order_id)
        return [a for a in self.actions.values() if a["order_id"] == order_id]

    # ---- effects --------------------------------------------------------------------------------

    async def act(self, kind: str, order_id: str, key: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Apply a refund, replacement or cancellation once per idempotency key.
        Returns (action, replayed)."""
        async with self._lock:
            if key in self.actions_by_key:
                action, first_body = self.actions_by_key[key]
                if first_body != body or action["order_id"] != order_id or action["type"] != kind:
                    raise Conflict(f"Idempotency-Key {key} was already used with a different request")
                return action, True
            order = self.order(order_id)
            amount = self._check(kind, order, body)
            undo = self._apply(kind, order, amount)
            action = {"action_id": f"act_{uuid.uuid4().hex[:12]}", "order_id": order_id, "type": kind,
                      "amount": amount, "reason": body.get("reason", ""), "status": "active",
                      "idempotency_key": key, "created_at": _now(), "_undo": undo}
            self.actions[action["action_id"]] = action
            self.actions_by_key[key] = (action, copy.deepcopy(body))
            return action, False

    @staticmethod
    def _check(kind: str, order: dict[str, Any], body: dict[str, Any]) -> float | None:
        status = order["status"]
        if kind == "refund":
            amount = body.get("amount")
            if amount is None:
                amount = order["refundable_amount"]
            amount = round(float(amount), 2)
            if amount <= 0:
                raise Conflict("refund amount must be greater than 0")
            if status in ("processing", "cancelled"):
                raise Conflict(f"order {order['order_id']} is {status}: nothing to refund")
            if amount > order["refundable_amount"] + 1e-9:
                raise Conflict(f"refund of {amount:.2f} exceeds the refundable amount "
                               f"{order['refundable_amount']:.2f} of order {order['order_id']}")
            return amount
        if kind == "cancellation":
            if status != "processing":
                raise Conflict(f"order {order['order_id']} is {status}: only processing orders can be cancelled")
            return order["total"]
        if kind == "replacement":
            if status not in ("delivered", "lost", "delayed", "returned"):
                raise Conflict(f"order {order['order_id']} is {status}: no replacement possible")
            return None
        raise Conflict(f"unknown action {kind}")

    @staticmethod
    def _apply(kind: str, order: dict[str, Any], amount: float | None) -> dict[str, Any]:
        """Apply an effect to the order; returns what its undo needs (only what the effect itself changed)."""
        if kind == "refund":
            order["refundable_amount"] = round(order["refundable_amount"] - (amount or 0), 2)
            order["refunded_total"] = round(order.get("refunded_total", 0.0) + (amount or 0), 2)
            order["refunds_active"] = order.get("refunds_active", 0) + 1
            return {}
        if kind == "cancellation":
            # A cancelled order takes no further refunds or replacements, so restoring it restores exactly
            # what the cancellation changed.
            previous = {"status": order["status"], "refundable_amount": order["refundable_amount"]}
            order["status"], order["refundable_amount"] = "cancelled", 0.0
            return previous
        order["replacements_active"] = order.get("replacements_active", 0) + 1
        order["replacement_requested"] = True
        return {}

    @staticmethod
    def _reverse(action: dict[str, Any], order: dict[str, Any]) -> None:
        """Undo one effect as a delta, so undoing an older action never erases a newer one."""
        kind = action["type"]
        if kind == "refund":
            order["refundable_amount"] = round(order["refundable_amount"] + (action["amount"] or 0), 2)
            order["refunded_total"] = round(max(0.0, order.get("refunded_total", 0.0) - (action["amount"] or 0)), 2)
            order["refunds_active"] = max(0, order.get("refunds_active", 1) - 1)
        elif kind == "cancellation":
            order.update(action["_undo"])
        else:
            order["replacements_active"] = max(0, order.get("replacements_active", 1) - 1)
            order["replacement_requested"] = order["replacements_active"] > 0

    async def undo(self, action_id: str) -> dict[str, Any]:
        """Undo an action (compensation). Undoing twice is one undo."""
        async with self._lock:
            action = self.actions.get(action_id)
            if action is None:
                raise NotFound(f"no action {action_id}")
            if action["status"] == "active":
                self._reverse(action, self.orders[action["order_id"]])
                action["status"] = "undone"
                action["undone_at"] = _now()
            return action

    async def ticket(self, key: str | None, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Open a human handoff ticket once per idempotency key (or message id)."""
        key = key or (f"message:{body['message_id']}" if body.get("message_id") else None)
        async with self._lock:
            if key and key in self.tickets_by_key:
                return self.tickets_by_key[key], True
            ticket = {"ticket_id": f"TCK-{len(self.tickets) + 1001}", **body, "status": "open", "created_at": _now()}
            self.tickets[ticket["ticket_id"]] = ticket
            if key:
                self.tickets_by_key[key] = ticket
            return ticket, False


def public(action: dict[str, Any]) -> dict[str, Any]:
    """An action without its private undo data."""
    return {k: v for k, v in action.items() if not k.startswith("_")}
