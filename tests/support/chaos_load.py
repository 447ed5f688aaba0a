"""Load and invariant checks for the chaos suite."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import nats

from actors import registry
from saga.log import SagaLog
from supportmesh.credentials import nats_options

from gateway.auth import mint_agent_token
from tests.support.chat_client import PROVISIONAL
from tests.support.identity import TEST_SECRET, TOKEN_TTL_S, auth

ACTORS = registry.names(registry.ACTORS)

# The colleague who approves what waits for approval during a load (the test meshes verify TEST_SECRET).
AGENT = {"Authorization": f"Bearer {mint_agent_token(TEST_SECRET, 'Chaos', TOKEN_TTL_S)}"}
NOT_ACCEPTED_RETRIES = 120  # 503 = nothing started: a client sends it again (60 s at 0.5 s)

# The chaos meshes' retry and recovery settings: short waits, so that kills are recovered from within a test.
MAX_ATTEMPTS = 4
MAX_DELIVERIES = MAX_ATTEMPTS + 1
MAX_REDELIVERIES, MAX_SWEEPS = 1, 2
ACK_WAIT_S = 3
CHAOS_ENV = {
    "SUPPORTMESH_CHAT_DEADLINE_S": "3", "SUPPORTMESH_ACK_WAIT_S": str(ACK_WAIT_S),
    "SUPPORTMESH_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "SUPPORTMESH_BACKOFF_BASE_S": "0.2", "SUPPORTMESH_BACKOFF_MAX_S": "1", "SUPPORTMESH_STALL_AFTER_S": "20",
    "SUPPORTMESH_SWEEP_INTERVAL_S": "2", "SUPPORTMESH_REDELIVERY_DELAY_S": "0.2",
    "SUPPORTMESH_MAX_REDELIVERIES": str(MAX_REDELIVERIES), "SUPPORTMESH_MAX_SWEEPS": str(MAX_SWEEPS),
}


@dataclass
class Outcome:
    message_id: str
    status: str          # resolved | escalated | (missing)
    response: str
    first_http: int
    seconds: float
    started_at: float = 0.0
    text: str = ""
    not_accepted: int = 0  # 503s before the gateway accepted it
    email: str = ""  # the signed-in customer who sent it (who may read its saga)


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


async def run_load(base: str, messages: list[tuple[str, str]], concurrency: int, settle_s: float = 90) -> list[Outcome]:
    """Send every message and follow 202s until the outcome (at most `settle_s`). A 503 means "not accepted,
    nothing started", so the same message is sent again, as a client would; any other refusal (or a transport
    error: the gateway itself is never killed here) fails the run."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def settled(r: httpx.Response, message_id: str, headers: dict[str, str], deadline: float, *,
                          final: bool = False) -> httpx.Response:
            """Follow the message until it is answered (not 202), or with `final` until its final answer (not a
            provisional one: a question, or a pending approval), at most until `deadline`."""
            # A 503 to a read is "ask again" (the store did not answer in time: a bus failing over), not an outcome.
            while time.monotonic() < deadline and (
                    r.status_code in (202, 503) or (final and r.status_code == 200
                                                    and r.json()["status"] in PROVISIONAL)):
                await asyncio.sleep(0.5)
                try:
                    r = await client.get(f"/api/chat/{message_id}", headers=headers)
                except httpx.HTTPError:
                    continue
            return r

        async def one(email: str, text: str) -> Outcome:
            body = {"session_id": uuid.uuid4().hex, "message": text}
            headers = auth(email)  # signed in as the customer
            async with sem:
                started = time.monotonic()
                r = await client.post("/api/chat", json=body, headers=headers)
                refused = 0
                while r.status_code == 503 and refused < NOT_ACCEPTED_RETRIES:
                    refused += 1
                    await asyncio.sleep(0.5)
                    r = await client.post("/api/chat", json=body, headers=headers)
                if r.status_code not in (200, 202):
                    raise AssertionError(f"the gateway refused {text!r} after {refused} 503s: {r.status_code} {r.text}")
            first, accepted = r.status_code, r.json()
            deadline = time.monotonic() + settle_s
            r = await settled(r, accepted["message_id"], headers, deadline)
            if r.status_code == 200 and r.json()["status"] == "needs_confirmation":
                # The customer says yes (the question is answered, the action then done once).
                async with sem:
                    yes = await client.post("/api/chat", json={**body, "message": "yes"}, headers=headers)
                    while yes.status_code == 503 and time.monotonic() < deadline:
                        await asyncio.sleep(0.5)
                        yes = await client.post("/api/chat", json={**body, "message": "yes"}, headers=headers)
                r = await settled(yes, accepted["message_id"], headers, deadline, final=True)
            if r.status_code == 200 and r.json()["status"] == "pending_approval":
                # A colleague approves it in the console (once; another gateway's click would get a 409).
                # An agent sees it in the queue once the saga waits: until then the approval is refused (409).
                approve = f"/api/console/sagas/{accepted['message_id']}/approve"
                while (await client.post(approve, headers=AGENT)).status_code in (409, 503) \
                        and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                r = await settled(r, accepted["message_id"], headers, deadline, final=True)
            final = r.json() if r.status_code == 200 else {"status": "missing", "response": ""}
            return Outcome(accepted["message_id"], final["status"], final.get("response", ""), first,
                           time.monotonic() - started, started, text, refused, email)

        return list(await asyncio.gather(*(one(e, t) for e, t in messages)))


async def sagas_since(endpoints: dict[str, Any], since: float) -> dict[str, list[Any]]:
    """Every saga the mesh started since `since` (epoch seconds) with its events, read from the saga log."""
    return (await sagas_listed_or_expected(endpoints, since, set()))[0]


async def sagas_listed_or_expected(endpoints: dict[str, Any], since: float,
                                   expected: set[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """`sagas_since`, plus the `expected` sagas read by key; and which of those the listing missed (the listing
    was once nats-py's `kv.keys()`, which came back short, on a cluster that had just lost a node and, now and
    then, anywhere (nats-io/nats.py#842); it is a direct-get read of the bucket now, and this check stays)."""
    nc = await nats.connect(**nats_options(endpoints))
    try:
        log = await SagaLog.open(nc.jetstream(timeout=10))
        listed = {s.message_id: s for s in await log.states()}
        missed = [mid for mid in sorted(expected - set(listed)) if await log.state(mid) is not None]
        states = [s for s in listed.values() if (s.started_at or 0) >= since]
        return {mid: await log.history(mid) for mid in [s.message_id for s in states] + missed}, missed
    finally:
        await nc.close()


async def consumer_caps(endpoints: dict[str, Any]) -> dict[str, int]:
    """The most deliveries JetStream makes of one message to each actor (its consumer's `max_deliver`)."""
    nc = await nats.connect(**nats_options(endpoints))
    try:
        js = nc.jetstream(timeout=10)
        return {actor: (await js.consumer_info("SUPPORT", actor)).config.max_deliver or -1 for actor in ACTORS}
    finally:
        await nc.close()


# Records of one delivery of a step, each carrying JetStream's delivery count (num_delivered) as its attempt: a
# delivery whose own records a kill lost still shows in the count of the next one.
PER_DELIVERY = frozenset({"step_started", "redelivered", "retry_scheduled", "step_completed", "step_failed"})


def _order_ids(outcomes: list[Outcome], sagas: dict[str, list[Any]]) -> set[str]:
    ids = {m for o in outcomes for m in re.findall(r"\b\d{5}\b", o.text)}
    ids |= {e.data["order_id"] for events in sagas.values() for e in events if e.kind == "action_executed"}
    return ids


def actions_by_message(mocks_url: str, order_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every action the orders API performed on these orders, by the message id in its idempotency key."""
    out: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(timeout=10) as client:
        for oid in sorted(order_ids):
            r = client.get(f"{mocks_url}/orders/{oid}/actions")
            if r.status_code == 404:
                continue
            r.raise_for_status()
            for action in r.json()["actions"]:
                out.setdefault(action["idempotency_key"].split(":")[0], []).append({**action, "order_id": oid})
    return out


def check_invariants(endpoints: dict[str, Any], outcomes: list[Outcome], *, since: float, max_deliveries: int,
                     max_republishes: int) -> dict[str, Any]:
    """The invariants of DESIGN §5 over every saga the mesh started since `since`; returns figures for the report.

    - every accepted message is answered (resolved or escalated) and its saga is terminal;
    - no saga ran that the client was not told about (a 503 must mean nothing started);
    - exactly 2 history rows per message;
    - at most one effect per (message, action, order), whatever idempotency key it was performed under;
    - no step delivered more than allowed: `max_deliveries` per publication of the step (the cap every actor's
      consumer enforces, and JetStream's delivery count on every record), and a step is published once plus at
      most `max_republishes` recovery resumptions (sweeper, escalation router) per saga.
    """
    missing = [(o.message_id, o.status, o.text) for o in outcomes if o.status not in ("resolved", "escalated")]
    assert not missing, f"{len(missing)} messages without an answer: {missing[:5]}"
    ids = {o.message_id for o in outcomes}
    sagas, missed_by_listing = asyncio.run(sagas_listed_or_expected(endpoints, since, ids))
    caps = asyncio.run(consumer_caps(endpoints))
    assert ids <= set(sagas), f"accepted messages with no saga: {sorted(ids - set(sagas))[:5]}"
    orphans = {mid: [e.kind for e in events] for mid, events in sagas.items() if mid not in ids}
    # Anything past its start (the gateway's own records) means a step was delivered.
    ran = {mid: kinds for mid, kinds in orphans.items() if set(kinds) - {"saga_started", "saga_failed"}}
    assert not ran, f"sagas that ran although their client was told they were not accepted: {list(ran.items())[:3]}"

    db = sqlite3.connect(endpoints["sqlite_path"])
    # The customer's row and the agent's answer (`<id>`, `<id>:agent`); a saga that waited for a person also has
    # the decision's answer (`<id>:confirmation`, `<id>:approval`), and the customer's yes is a row of its own.
    rows = Counter(r[0].removesuffix(":agent") for r in db.execute("SELECT message_id FROM messages"))
    db.close()
    bad_rows = {m: rows.get(m, 0) for m in ids if rows.get(m, 0) != 2}
    assert not bad_rows, f"history rows per message should be 2: {list(bad_rows.items())[:5]}"

    with httpx.Client(timeout=10) as client:
        states = {o.message_id: client.get(f"{endpoints['gateway_url']}/api/sagas/{o.message_id}",
                                           headers=auth(o.email)).json()["state"] for o in outcomes}
    not_terminal = {mid: s for mid, s in states.items() if s["status"] not in ("completed", "escalated")}
    assert not not_terminal, f"sagas not in a terminal state: {list(not_terminal.items())[:5]}"

    uncapped = {actor: cap for actor, cap in caps.items() if not 0 < cap <= max_deliveries}
    assert not uncapped, f"consumers that deliver a message more than {max_deliveries} times: {uncapped}"
    deliveries: Counter[tuple[str, int]] = Counter()
    delivery_count: Counter[tuple[str, int]] = Counter()  # the highest num_delivered recorded, per step
    republishes: Counter[str] = Counter()
    compensations = 0
    for mid in ids:
        for e in sagas[mid]:
            if e.kind in PER_DELIVERY and e.data.get("source") not in ("sweeper", "escalation_router"):
                delivery_count[(mid, e.step_index)] = max(delivery_count[(mid, e.step_index)], e.attempt)
            if e.kind == "redelivered":
                # Every delivery after a step's first records one (the first is the hop itself).
                deliveries[(mid, e.step_index)] += 1
            if e.kind == "redelivered" and e.data.get("source") in ("sweeper", "escalation_router"):
                republishes[mid] += 1
            elif e.kind == "compensation_completed":
                compensations += 1
    too_many = {k: 1 + n for k, n in deliveries.items() if 1 + n > max_deliveries * (1 + republishes[k[0]])}
    assert not too_many, f"steps delivered more than {max_deliveries} times per publication: {too_many}"
    too_many = {k: n for k, n in delivery_count.items() if n > max_deliveries}
    assert not too_many, f"steps JetStream delivered more than {max_deliveries} times: {too_many}"
    looping = {mid: n for mid, n in republishes.items() if n > max_republishes}
    assert not looping, f"sagas resumed more than {max_republishes} times: {looping}"

    actions = actions_by_message(endpoints["mocks_url"], _order_ids(outcomes, sagas))
    # Per effect, not per key: the orders API merges a key's repeats, so only a second key can double an effect.
    effects = Counter((mid, a["type"], a["order_id"]) for mid in ids for a in actions.get(mid, []))
    duplicates = {k: n for k, n in effects.items() if n > 1}
    assert not duplicates, f"side effects performed twice: {duplicates}"
    seconds = sorted(o.seconds for o in outcomes)
    return {"chats": len(outcomes), "answered": len(outcomes) - len(missing), "lost": len(missing),
            "duplicates": len(duplicates), "effects": sum(effects.values()), "compensations": compensations,
            "escalated": sum(1 for o in outcomes if o.status == "escalated"),
            "not_accepted_503": sum(o.not_accepted for o in outcomes), "orphans_never_run": len(orphans),
            "states_missed_by_listing": len(missed_by_listing),
            "max_deliveries_of_a_step": max([*deliveries.values(), *delivery_count.values()], default=0),
            "max_resumptions_of_a_saga": max(republishes.values(), default=0),
            "p50_s": round(seconds[len(seconds) // 2], 2), "max_s": round(seconds[-1], 2)}
