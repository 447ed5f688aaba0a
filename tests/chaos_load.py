"""Load and invariant checks for the chaos suite."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Outcome:
    message_id: str
    status: str          # resolved | escalated | (missing)
    response: str
    first_http: int
    seconds: float
    started_at: float = 0.0


def build_messages(mocks_url: str, count: int) -> list[tuple[str, str]]:
    """(email, text) pairs over the seeded customers and their orders: statuses, refunds, cancellations,
    complaints, critical messages."""
    emails = ["user@example.com", "jane.smith@example.com"] + [
        f"{f}.{l}@example.com" for f, l in (("alice", "martin"), ("bruno", "silva"), ("chen", "wang"),
                                            ("dana", "cohen"), ("emil", "novak"), ("fatima", "haddad"))]
    pairs: list[tuple[str, str]] = []
    with httpx.Client(base_url=mocks_url, timeout=10) as client:
        for email in emails:
            for order in client.get(f"/customers/{email}/orders").json()["orders"]:
                oid = order["order_id"]
                pairs += [(email, f"Where is my order {oid}?"), (email, f"I want a refund for order {oid}"),
                          (email, f"Please cancel order {oid}"), (email, f"My order {oid} is late!")]
    pairs += [("user@example.com", "This is fraud, I will call my lawyer"), ("user@example.com", "asdf qwer")]
    return [pairs[i % len(pairs)] for i in range(count)]


async def run_load(base: str, messages: list[tuple[str, str]], concurrency: int, settle_s: float = 240) -> list[Outcome]:
    """Send every message (retrying ones the gateway did not accept), follow 202s until the outcome."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(email: str, text: str) -> Outcome:
            async with sem:
                started = time.monotonic()
                for _ in range(60):  # not accepted (e.g. NATS restarting): try again, like a client would
                    try:
                        r = await client.post("/api/chat", json={"session_id": uuid.uuid4().hex,
                                                                 "customer_email": email, "message": text})
                    except httpx.HTTPError:
                        await asyncio.sleep(0.5)
                        continue
                    if r.status_code in (200, 202):
                        break
                    await asyncio.sleep(0.5)
                else:
                    raise AssertionError(f"the gateway never accepted {text!r}: {r.status_code} {r.text}")
            first, body = r.status_code, r.json()
            deadline = time.monotonic() + settle_s
            while r.status_code == 202 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                try:
                    r = await client.get(f"/api/chat/{body['message_id']}")
                except httpx.HTTPError:
                    continue
            final = r.json() if r.status_code == 200 else {"status": "missing", "response": ""}
            return Outcome(body["message_id"], final["status"], final.get("response", ""), first,
                           time.monotonic() - started, started)

        return list(await asyncio.gather(*(one(e, t) for e, t in messages)))


def check_invariants(base: str, mocks_url: str, sqlite_path: Path, outcomes: list[Outcome],
                     max_deliveries: int) -> dict[str, float]:
    """The invariants of DESIGN §5; returns figures for the report."""
    missing = [o.message_id for o in outcomes if o.status not in ("resolved", "escalated")]
    assert not missing, f"{len(missing)} messages without an answer: {missing[:5]}"
    ids = {o.message_id for o in outcomes}
    # exactly 2 history rows per message
    db = sqlite3.connect(sqlite_path)
    rows = Counter(r[0].split(":")[0] for r in db.execute("SELECT message_id FROM messages"))
    bad_rows = {m: rows.get(m, 0) for m in ids if rows.get(m, 0) != 2}
    assert not bad_rows, f"history rows per message should be 2: {list(bad_rows.items())[:5]}"
    # no side effect twice, and every saga terminal with bounded deliveries
    effects: Counter[str] = Counter()
    with httpx.Client(timeout=10) as client:
        orders = set()
        max_attempt = 0
        for mid in ids:
            saga = client.get(f"{base}/api/sagas/{mid}").json()
            assert saga["state"]["status"] in ("completed", "escalated"), (mid, saga["state"])
            for e in saga["events"]:
                max_attempt = max(max_attempt, e["attempt"])
                if e["kind"] == "action_executed":
                    orders.add(e["data"]["order_id"])
        for oid in orders:
            for action in client.get(f"{mocks_url}/orders/{oid}/actions").json()["actions"]:
                mid = action["idempotency_key"].split(":")[0]
                if mid in ids:
                    effects[f"{mid}:{action['type']}"] += 1
    duplicates = {k: v for k, v in effects.items() if v > 1}
    assert not duplicates, f"side effects performed twice: {duplicates}"
    assert max_attempt <= max_deliveries, f"a step was delivered {max_attempt} times (max {max_deliveries})"
    return {"chats": len(outcomes), "answered": len(outcomes) - len(missing), "lost": len(missing),
            "duplicates": len(duplicates), "effects": sum(effects.values()), "max_attempt": max_attempt,
            "escalated": sum(1 for o in outcomes if o.status == "escalated"),
            "p50_s": sorted(o.seconds for o in outcomes)[len(outcomes) // 2],
            "max_s": max(o.seconds for o in outcomes)}
