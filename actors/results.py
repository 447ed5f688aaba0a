"""The support mesh's answers: `ChatResult` (what the customer gets back for one message, stored in the KV
bucket `chat_results`), and the honest answer of a failed saga, naming each side effect as it stands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from actors.domain import AgentResponse, Message
from saga.log import SagaEvent
from saga.results import ResultStore as KVResultStore

COMPENSATION_KINDS = ("compensation_started", "compensation_completed", "compensation_failed")

RESULTS_BUCKET = "chat_results"


class ChatAnswer(BaseModel):
    """The agent's answer to one message, as the customer sees it (the gateway's `ChatResponse`)."""

    message_id: str
    session_id: str
    # `needs_confirmation` and `pending_approval` are provisional: the saga waits for the customer's yes or a
    # colleague's decision, and its final answer replaces this one.
    status: Literal["resolved", "escalated", "needs_confirmation", "pending_approval"]
    response: str
    # What waits for a yes or an approval: {action, order_id, amount}.
    pending_action: dict[str, Any] | None = None
    action_plan: dict[str, Any] | None = None
    execution_result: dict[str, Any] | None = None
    trace_id: str | None = None


class ChatResult(ChatAnswer):
    """What the customer gets back for one message, as stored (when it finished, and who may read it)."""

    model_config = ConfigDict(extra="forbid")

    finished_at: float = Field(default_factory=time.time)
    # Who may read it (`customer:<email>` or `guest`, see gateway/auth.py).
    owner: str | None = None

    def to_bytes(self) -> bytes:
        """Serialize for KV and the reply subject."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> ChatResult:
        """Parse a stored or published result."""
        return cls.model_validate(orjson.loads(data))


class ResultStore(KVResultStore[ChatResult]):
    """The `chat_results` KV bucket."""

    bucket = RESULTS_BUCKET
    model = ChatResult


# The answer when a finished route produced no reply text (should not happen; never an empty answer).
NO_RESPONSE_REPLY = "Thanks for your message. A colleague will look into it and get back to you shortly."
# A failed saga's answer when a handoff ticket was opened for it: a colleague really has it.
FAILED_REPLY = (
    "I'm sorry, I couldn't finish handling your message automatically, so I've passed it to a colleague (ticket "
    "{ticket_id}), who will follow up with you by email within one business day."
)
# ...and when none could be opened: no one has been told to follow up, so the customer is asked to come back.
FAILED_RECORDED_REPLY = (
    "I'm sorry, I couldn't finish handling your message. It has been recorded for our support team under "
    "reference {reference}; please reply here or contact our support team quoting that reference so we can "
    "help you further."
)
# The orders API and the action plans name actions; the customer reads nouns.
ACTION_NOUN = {"refund": "refund", "cancel": "cancellation", "cancellation": "cancellation",
               "replacement": "replacement"}


def action_noun(action: str) -> str:
    """How the customer reads an action's name ("cancel" is a "cancellation")."""
    return ACTION_NOUN.get(action, action)


PROVISIONAL = {"confirmation": "needs_confirmation", "approval": "pending_approval"}


def provisional(message: Message) -> bool:
    """Whether an answer given at this step is provisional: a step after it waits for a person (the decision
    router puts the answering step before the acting one, see `registry.route_answering_first`)."""
    plan = message.payload.action_plan
    return (plan is not None and plan.requires is not None and message.payload.decision is None
            and message.route.current_step < len(message.route.steps) - 1)


def build_result(message: Message, trace_id: str | None = None) -> ChatResult:
    """The customer's answer from the message. A saga that was escalated or failed answers `escalated` (it is
    with people now: a colleague follows up, or, when no ticket could be opened, the answer asks the customer to
    come back with its reference). An answer before a wait for a person is `needs_confirmation` or
    `pending_approval`, naming the pending action."""
    p = message.payload
    status = "escalated" if message.metadata.outcome in ("escalated", "failed") else "resolved"
    pending = None
    if provisional(message) and p.action_plan is not None and p.action_plan.requires is not None:
        status = PROVISIONAL[p.action_plan.requires]
        pending = {"action": p.action_plan.action, "order_id": p.action_plan.order_id, "amount": p.action_plan.amount}
    return ChatResult(
        pending_action=pending,
        message_id=message.message_id,
        session_id=message.session_id,
        status=status,
        response=p.response.text if p.response else NO_RESPONSE_REPLY,
        action_plan=p.action_plan.model_dump(mode="json") if p.action_plan else None,
        execution_result=p.execution_result.model_dump(mode="json") if p.execution_result else None,
        trace_id=trace_id or message.metadata.trace_id,
        owner=message.owner,
    )


@dataclass
class SagaEffects:
    """The side effects of a saga, from its history: each one exactly once, in the order they happened."""

    kept: list[dict[str, Any]] = field(default_factory=list)  # done, and still in effect
    undone: list[dict[str, Any]] = field(default_factory=list)  # reversed (`compensation_completed`)
    reversing: list[dict[str, Any]] = field(default_factory=list)  # undo started; its outcome is unknown
    not_reversed: list[dict[str, Any]] = field(default_factory=list)  # undo given up (`compensation_failed`)


def saga_effects(message: Message, history: list[SagaEvent]) -> SagaEffects:
    """What the saga did and undid: effects recorded (`action_executed`, compensations of effects found at the
    API) or carried by the message, each classified by its last compensation fact."""
    effects: dict[str, dict[str, Any]] = {}
    for event in history:
        if event.kind in ("action_executed", *COMPENSATION_KINDS) and event.data.get("action_id"):
            effects.setdefault(str(event.data["action_id"]), event.data)
    if message.payload.execution_result is not None:
        for action in message.payload.execution_result.actions:
            effects.setdefault(action.action_id, action.model_dump(mode="json"))
    facts = {kind: {str(e.data.get("action_id")) for e in history if e.kind == kind} for kind in COMPENSATION_KINDS}
    out = SagaEffects()
    for action_id, data in effects.items():
        if action_id in facts["compensation_completed"]:
            out.undone.append(data)
        elif action_id in facts["compensation_failed"]:
            out.not_reversed.append(data)
        elif action_id in facts["compensation_started"]:
            out.reversing.append(data)
        else:
            out.kept.append(data)
    return out


def _named(effect: dict[str, Any]) -> str:
    return f"{action_noun(str(effect.get('action', 'action')))} on order {effect.get('order_id', '?')}"


def failed_reply(effects: SagaEffects, ticket_id: str | None, reference: str) -> str:
    """The honest answer of a saga that cannot finish. With a ticket, a colleague follows up (named by the
    ticket); without one, the customer learns the message was recorded under `reference` and is asked to come
    back. Each side effect is named as it really stands (done, reversed, being reversed, or not reversed)."""
    if ticket_id:
        parts = [FAILED_REPLY.format(ticket_id=ticket_id)]
        confirm = "; my colleague will confirm it with you."
        reversing = "my colleague will make sure it is reversed and confirm with you."
        not_reversed = "my colleague will reverse it by hand and confirm with you."
    else:
        parts = [FAILED_RECORDED_REPLY.format(reference=reference)]
        confirm = "."
        reversing = "I cannot confirm it was reversed, so please mention it when you contact us."
        not_reversed = "please mention it when you contact us so that it is reversed."
    if effects.kept:
        done = ", ".join(_named(e) for e in effects.kept)
        parts.append(f"Already done before the interruption: {done}{confirm}")
    parts += [f"I had started a {_named(e)} and reversed it, so nothing happens twice." for e in effects.undone]
    parts += [f"I was reversing a {_named(e)} when this happened; {reversing}" for e in effects.reversing]
    parts += [f"I had started a {_named(e)} and could not reverse it automatically; {not_reversed}"
              for e in effects.not_reversed]
    return " ".join(parts)


def recorded_ticket(history: list[SagaEvent]) -> str | None:
    """The handoff ticket the saga log says was opened for this saga (by an escalation or an earlier failure),
    the latest one; None when there is none."""
    tickets = [e.data["ticket_id"] for e in history
               if e.kind in ("escalated", "saga_failed") and isinstance(e.data.get("ticket_id"), str)]
    return tickets[-1] if tickets else None


def failed_enrichment(message: Message, history: list[SagaEvent], ticket_id: str | None = None) -> dict[str, Any]:
    """The payload fields of a failed saga's answer (JSON, as recorded in the saga log): the reply (naming the
    handoff ticket, when one was opened), and the execution result with every reversed action marked `undone`."""
    effects = saga_effects(message, history)
    text = failed_reply(effects, ticket_id, reference=message.message_id)
    response = AgentResponse(text=text, model="supportmesh-runtime", fallback_used=True)
    enrichment: dict[str, Any] = {"response": response.model_dump(mode="json")}
    marked = execution_with_undone(message, {str(e.get("action_id")) for e in effects.undone})
    if marked is not None:
        enrichment["execution_result"] = marked
    return enrichment


def execution_with_undone(message: Message, undone_ids: set[str]) -> dict[str, Any] | None:
    """The message's execution result (JSON) with every action reversed by compensation marked `undone`, so
    the answer never shows a reversed refund as done; None when nothing was executed or nothing changes."""
    executed = message.payload.execution_result
    if executed is None or not executed.actions or not undone_ids & {a.action_id for a in executed.actions}:
        return None
    actions = [a.model_copy(update={"status": "undone"}) if a.action_id in undone_ids else a
               for a in executed.actions]
    return executed.model_copy(update={"actions": actions}).model_dump(mode="json")


def fallback_result(message: Message, history: list[SagaEvent], *, trace_id: str | None = None,
                    ticket_id: str | None = None) -> ChatResult:
    """The answer of a failed saga, given directly (when its answering step is what fails)."""
    failed = message.enriched(failed_enrichment(message, history, ticket_id))
    failed = failed.model_copy(update={"metadata": failed.metadata.model_copy(update={"outcome": "failed"})})
    return build_result(failed, trace_id)
