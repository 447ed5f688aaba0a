"""Sagas waiting for a colleague's approval: the console's `approval` queue items, and the decision as the
saga's `approval` signal (the execution coordinator waits for it, see actors/decisions.py).

A decision is taken once: the first approve or deny that reaches the saga ends its wait, and every later one
(the same click through another gateway, a second agent) answers 409, as does a decision on a saga that is not
waiting for one (finished, timed out, unknown)."""

from __future__ import annotations

import logging
from typing import Any

from actors.domain import SUBJECT_PREFIX
from gateway.schemas import QueueItem
from gateway.state import Gateway
from saga.log import SagaEvent, SagaState
from saga.signals import SignalOutcome, send_signal

log = logging.getLogger("supportmesh.gateway")

APPROVAL = "approval"
CONFIRMATION = "confirmation"


async def signal(gw: Gateway, message_id: str, name: str, payload: dict[str, Any], *,
                 buffer: bool = False) -> SignalOutcome:
    """Send the signal `name` to the saga `message_id` (what the customer's reply and the console's click do);
    with `buffer`, kept for the saga's next wait when it does not wait for it yet."""
    return await send_signal(gw.saga, gw.js, message_id, name, payload, subject_prefix=SUBJECT_PREFIX,
                             buffer=buffer)


async def decide(gw: Gateway, message_id: str, *, approved: bool, agent: str, note: str = "") -> SignalOutcome:
    """An agent's approval or denial of the action a saga waits to take."""
    outcome = await signal(gw, message_id, APPROVAL, {"approved": approved, "agent": agent, "note": note})
    log.info("approval of %s by %s: %s (%s)", message_id, agent, "approved" if approved else "denied", outcome)
    return outcome


async def waiting_for_approval(gw: Gateway) -> list[QueueItem]:
    """The sagas that wait for a colleague's decision, oldest first, each with the action it proposes."""
    items = []
    for state in await gw.saga.running():
        if state.status != "waiting" or getattr(state, "signal", None) != APPROVAL:
            continue
        started = _wait_started(await gw.saga.history(state.message_id))
        if started is not None:
            items.append(_item(state, started))
    return sorted(items, key=lambda item: item.opened_at)


def _wait_started(history: list[SagaEvent]) -> SagaEvent | None:
    waits = [e for e in history if e.kind == "wait_started" and e.data.get("signal") == APPROVAL]
    return waits[-1] if waits else None


def _item(state: SagaState, started: SagaEvent) -> QueueItem:
    pending = started.data.get("data") or {}
    notes = pending.get("notes") or []
    return QueueItem(
        kind="approval", session_id=state.session_id or "", message_id=state.message_id,
        customer_email=str(pending.get("customer", "")), verified=True, reason="; ".join(map(str, notes)),
        opened_at=started.ts,
        proposed_action={k: pending.get(k) for k in ("action", "order_id", "amount")},
    )
