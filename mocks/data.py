"""Seed data of the mock commerce APIs: the specification's records plus a deterministic, realistic set.

Notable records (scenario tests rely on them):
- `user@example.com` — cust_001, John Doe, premium. Orders: `12345` shipped, tracking `1Z999AA10123456784`, in
  transit at the "Distribution Center" and past its expected delivery date (late); `55555` processing (can be
  cancelled); `44444` delivered (refundable); `33333` lost in transit.
- `jane.smith@example.com` — cust_002, Jane Smith, standard. Order `67890` delivered (another customer's order
  for disclosure tests).
- 20+ more customers (`<first>.<last>@example.com`) across tiers, 60+ orders in every status.
Dates are relative to the moment the data is built, so "late" is late.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

STATUSES = ("processing", "shipped", "delayed", "delivered", "lost", "returned", "cancelled")
TIERS = ("standard", "premium", "vip")
CARRIERS = ("UPS", "FedEx", "DHL")
PRODUCTS = [
    ("SKU-HDP-01", "Wireless Headphones", 89.99), ("SKU-KBD-02", "Mechanical Keyboard", 129.0),
    ("SKU-MUG-03", "Ceramic Coffee Mug", 14.5), ("SKU-LMP-04", "Desk Lamp", 39.95),
    ("SKU-BAG-05", "Travel Backpack", 74.0), ("SKU-SHO-06", "Running Shoes", 110.0),
    ("SKU-WAT-07", "Smart Watch", 249.0), ("SKU-BOT-08", "Water Bottle", 19.99),
    ("SKU-CHR-09", "USB-C Charger", 29.99), ("SKU-BKS-10", "Cookbook", 24.5),
    ("SKU-JKT-11", "Rain Jacket", 95.0), ("SKU-PAN-12", "Frying Pan", 45.0),
]
FIRST = ["alice", "bruno", "chen", "dana", "emil", "fatima", "george", "hana", "ivan", "julia", "kofi", "lena",
         "marco", "nina", "omar", "priya", "quinn", "rosa", "sami", "tara", "umar", "vera"]
LAST = ["martin", "silva", "wang", "cohen", "novak", "haddad", "brown", "sato", "petrov", "rossi", "mensah",
        "berg", "ricci", "kowalski", "farouk", "shah", "murphy", "garcia", "virtanen", "okafor", "ali", "lind"]
LOCATIONS = ["Distribution Center", "Regional Hub, Chicago IL", "Sorting Facility, Memphis TN",
             "Local Depot, Denver CO", "Out for delivery", "Customs, Newark NJ"]


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _tracking(tracking_id: str, order_id: str, status: str, now: datetime, rng: random.Random,
              location: str | None = None, expected: datetime | None = None) -> dict[str, Any]:
    carrier = rng.choice(CARRIERS)
    expected = expected or now + timedelta(days=rng.randint(-4, 4))
    track_status = {"shipped": "in_transit", "delayed": "delayed", "delivered": "delivered", "lost": "exception",
                    "returned": "returned_to_sender"}.get(status, "label_created")
    loc = location or ("Delivered to front door" if status == "delivered" else rng.choice(LOCATIONS))
    events = [{"time": _iso(now - timedelta(days=6)), "location": "Origin Facility", "description": "Shipment picked up"},
              {"time": _iso(now - timedelta(days=4)), "location": "Regional Hub", "description": "Departed facility"},
              {"time": _iso(now - timedelta(days=2)), "location": loc, "description": {
                  "in_transit": "Arrived at facility", "delayed": "Delayed: weather", "delivered": "Delivered",
                  "exception": "Package could not be located", "returned_to_sender": "Returned to sender",
              }.get(track_status, "Label created")}]
    return {"tracking_id": tracking_id, "order_id": order_id, "carrier": carrier, "status": track_status,
            "location": loc, "expected_delivery": _day(expected), "estimated_delivery": _day(expected),
            "events": events}


def _order(order_id: str, customer: dict[str, Any], status: str, now: datetime, rng: random.Random,
           items: list[tuple[str, str, float, int]] | None = None) -> dict[str, Any]:
    if items is None:
        picks = rng.sample(PRODUCTS, rng.randint(1, 3))
        items = [(sku, name, price, rng.randint(1, 2)) for sku, name, price in picks]
    lines = [{"sku": s, "name": n, "quantity": q, "unit_price": p} for s, n, p, q in items]
    total = round(sum(p * q for _, _, p, q in items), 2)
    created = now - timedelta(days=rng.randint(3, 30))
    shipped = created + timedelta(days=1) if status not in ("processing", "cancelled") else None
    expected = created + timedelta(days=7)
    if status in ("shipped", "delayed", "lost"):
        expected = now - timedelta(days=rng.randint(1, 3)) if status != "shipped" else now + timedelta(days=2)
    delivered = (created + timedelta(days=5)) if status in ("delivered", "returned") else None
    return {
        "order_id": order_id, "customer_id": customer["id"], "customer_email": customer["email"],
        "status": status, "items": lines, "total": total, "currency": "USD",
        "created_at": _iso(created), "shipped_at": _iso(shipped) if shipped else None,
        "expected_delivery": _day(expected), "delivered_at": _iso(delivered) if delivered else None,
        "tracking_id": None if status in ("processing", "cancelled") else f"1Z{rng.randint(10**15, 10**16 - 1)}",
        "refundable_amount": 0.0 if status == "cancelled" else total,
        # The order's history of active (not undone) actions, which the agent's policy limits per order.
        "refunded_total": 0.0, "refunds_active": 0, "replacements_active": 0,
    }


def build_seed(now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Customers by email, orders by id, tracking by id."""
    now = now or datetime.now(UTC)
    rng = random.Random(20261124)
    customers: dict[str, dict[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    tracking: dict[str, dict[str, Any]] = {}

    def add_customer(cid: str, name: str, email: str, tier: str, since_days: int) -> dict[str, Any]:
        c = {"id": cid, "name": name, "email": email, "tier": tier,
             "member_since": _day(now - timedelta(days=since_days)), "lifetime_value": 0.0}
        customers[email] = c
        return c

    john = add_customer("cust_001", "John Doe", "user@example.com", "premium", 900)
    jane = add_customer("cust_002", "Jane Smith", "jane.smith@example.com", "standard", 400)

    spec = _order("12345", john, "shipped", now, rng,
                  items=[("SKU-HDP-01", "Wireless Headphones", 89.99, 1), ("SKU-CHR-09", "USB-C Charger", 29.99, 1)])
    spec["tracking_id"] = "1Z999AA10123456784"
    spec["expected_delivery"] = _day(now - timedelta(days=1))  # it was due yesterday: late
    orders["12345"] = spec
    tracking[spec["tracking_id"]] = _tracking(spec["tracking_id"], "12345", "shipped", now, rng,
                                              location="Distribution Center", expected=now + timedelta(days=2))
    tracking[spec["tracking_id"]]["carrier"] = "UPS"
    for oid, status, items in (("55555", "processing", [("SKU-KBD-02", "Mechanical Keyboard", 129.0, 1)]),
                               ("44444", "delivered", [("SKU-MUG-03", "Ceramic Coffee Mug", 14.5, 2)]),
                               ("33333", "lost", [("SKU-LMP-04", "Desk Lamp", 39.95, 1)])):
        orders[oid] = _order(oid, john, status, now, rng, items=items)
    orders["67890"] = _order("67890", jane, "delivered", now, rng, items=[("SKU-WAT-07", "Smart Watch", 249.0, 1)])

    generated = []
    for i in range(22):
        first, last = FIRST[i], LAST[i]
        generated.append(add_customer(f"cust_{i + 3:03d}", f"{first.title()} {last.title()}",
                                      f"{first}.{last}@example.com", TIERS[i % 3], rng.randint(30, 2000)))
    for n in range(70):
        customer = generated[n % len(generated)]
        status = STATUSES[n % len(STATUSES)]
        oid = str(70001 + n)
        orders[oid] = _order(oid, customer, status, now, rng)

    for order in orders.values():
        tid = order["tracking_id"]
        if tid and tid not in tracking:
            tracking[tid] = _tracking(tid, order["order_id"], order["status"], now, rng,
                                      expected=datetime.fromisoformat(order["expected_delivery"]).replace(tzinfo=UTC))
        customers[order["customer_email"]]["lifetime_value"] = round(
            customers[order["customer_email"]]["lifetime_value"] + order["total"], 2)
    return {"customers": customers, "orders": orders, "tracking": tracking}
