"""The escalation router's pure decisions: what was undone (from the whole saga history), which effects the
orders API performed for this saga, and when a failure must not be routed back. The recovery paths themselves
run against a real nats-server and the real mock APIs in test_recovery.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from actors.commerce import CommerceClient
from actors.escalation_router import (
    effects_at_api,
    failed_saga_compensation,
    must_not_route_back,
    ticket_summary,
    undone_effects,
)
from saga.log import SagaEvent
from saga.protocol import ErrorInfo, ExecutedAction, ExecutionResult, new_message
from saga.results import (
    failed_enrichment,
    fallback_result,
    recorded_ticket,
    saga_effects,
)
from supportmesh.config import Settings

# ---- pure decisions --------------------------------------------------------------------------------------


def _event(kind: str, step: int, data: dict[str, Any], seq: int = 0) -> SagaEvent:
    return SagaEvent(message_id="m1", kind=kind, actor="x", step_index=step, seq=seq, data=data)


def test_undone_effects_come_from_the_whole_history_including_older_records() -> None:
    executed = {"action": "refund", "order_id": "44444", "action_id": "act_1", "amount": 5.0,
                "undo": {"method": "POST", "url": "http://o/actions/act_1/undo"}}
    history = [
        _event("action_executed", 0, executed),
        _event("compensation_completed", 0, {"action_id": "act_1", "status": "undone"}),  # the older, terse record
        _event("compensation_completed", 3, {"action": "cancel", "order_id": "55555", "action_id": "act_2"}, seq=9),
        _event("compensation_completed", 5, {"action_id": "act_1", "status": "undone"}, seq=7),  # a retried step
    ]
    undone = undone_effects(history)
    assert [(e.action_id, e.action, e.order_id, e.amount) for e in undone] == [
        ("act_1", "refund", "44444", 5.0), ("act_2", "cancel", "55555", None)]
    assert undone[0].undo_url == "http://o/actions/act_1/undo"


def test_effects_at_api_are_this_sagas_only() -> None:
    api = CommerceClient(Settings(orders_api_url="http://o"))
    listed = [
        {"action_id": "a1", "order_id": "55555", "type": "cancellation", "amount": 1.0,
         "idempotency_key": "m1:cancel:55555", "created_at": "2024-01-02T00:00:00+00:00"},
        {"action_id": "a2", "order_id": "55555", "type": "refund", "amount": 2.0,
         "idempotency_key": "m10:refund:55555", "created_at": "2024-01-01T00:00:00+00:00"},
        {"action_id": "a3", "order_id": "55555", "type": "refund", "amount": 3.0,
         "idempotency_key": "m1:refund:55555", "created_at": "2024-01-01T00:00:00+00:00"},
    ]
    found = effects_at_api(listed, "m1", api)
    assert [(e.action_id, e.action, e.source) for e in found] == [("a3", "refund", "orders_api"),
                                                                   ("a1", "cancel", "orders_api")]
    assert found[0].undo_url == "http://o/actions/a3/undo"


def test_no_route_back_after_escalation_or_when_the_answer_step_failed() -> None:
    error = ErrorInfo(actor="flaky", step_index=2, kind="retryable_exhausted", detail="x", failed_route=["flaky"])
    assert not must_not_route_back(error, [])
    assert must_not_route_back(error, [_event("escalated", 1, {"reason": "critical_sentiment"})])
    assert must_not_route_back(error.model_copy(update={"actor": "response_aggregator"}), [])
    assert not must_not_route_back(None, [_event("escalated", 1, {})])



# ---- the answer of a failed saga ------------------------------------------------------------------------


def _executed(action: str, order_id: str, action_id: str) -> dict[str, Any]:
    return ExecutedAction(action=action, order_id=order_id, action_id=action_id,  # type: ignore[arg-type]
                          idempotency_key=f"m1:{action}:{order_id}").model_dump(mode="json")


def _failed_saga_with_every_kind_of_effect() -> tuple[Any, list[SagaEvent]]:
    """A message and its history: a refund reversed, a cancellation whose undo was given up, a replacement
    being reversed, and a refund kept."""
    refund, cancel, replacement, kept = (_executed("refund", "44444", "act_1"), _executed("cancel", "55555", "act_2"),
                                         _executed("replacement", "66666", "act_3"), _executed("refund", "77777", "act_4"))
    history = [
        _event("action_executed", 1, refund), _event("action_executed", 1, cancel, seq=1),
        _event("action_executed", 1, replacement, seq=2), _event("action_executed", 1, kept, seq=3),
        _event("compensation_started", 3, refund, seq=11), _event("compensation_completed", 3, refund, seq=11),
        _event("compensation_started", 3, cancel, seq=12), _event("compensation_failed", 3, cancel, seq=12),
        _event("compensation_started", 3, replacement, seq=13),
    ]
    message = new_message(session_id="s1", customer_email="user@example.com", customer_message="help")
    message = message.enriched({"execution_result": ExecutionResult(success=True, actions=[
        ExecutedAction.model_validate(refund), ExecutedAction.model_validate(kept)])})
    return message, history


def test_a_failed_sagas_answer_names_its_ticket_and_each_effect_as_its_history_has_it() -> None:
    message, history = _failed_saga_with_every_kind_of_effect()

    result = fallback_result(message, history, ticket_id="TCK-1042")

    text = result.response
    assert result.status == "escalated" and "passed it to a colleague (ticket TCK-1042)" in text
    assert "Already done before the interruption: refund on order 77777;" in text
    assert "refund on order 44444 and reversed it" in text and "Already done before the interruption: refund on " \
        "order 44444" not in text
    assert "cancellation on order 55555 and could not reverse it automatically; my colleague will" in text
    assert "reversing a replacement on order 66666" in text
    assert [(a["action_id"], a["status"]) for a in result.execution_result["actions"]] == [
        ("act_1", "undone"), ("act_4", "active")]


def test_a_failed_sagas_answer_without_a_ticket_promises_no_colleague() -> None:
    """No ticket could be opened: nobody was told to follow up, so the answer says the message was recorded,
    gives its reference and asks the customer to come back, with every effect still named honestly."""
    message, history = _failed_saga_with_every_kind_of_effect()

    text = fallback_result(message, history).response

    assert "colleague" not in text and "ticket" not in text and "follow up" not in text
    assert f"recorded for our support team under reference {message.message_id}" in text
    assert "please reply here or contact our support team" in text
    assert "Already done before the interruption: refund on order 77777." in text
    assert "refund on order 44444 and reversed it" in text
    assert "cancellation on order 55555 and could not reverse it automatically; please mention it" in text
    assert "reversing a replacement on order 66666 when this happened; I cannot confirm it was reversed" in text


def test_a_failed_saga_without_effects_says_only_what_happens_next() -> None:
    message = new_message(session_id="s1", customer_email="user@example.com", customer_message="help")
    with_ticket = failed_enrichment(message, [], "TCK-7")["response"]["text"]
    without = failed_enrichment(message, [])
    assert "execution_result" not in without
    assert "Already done" not in with_ticket and "(ticket TCK-7)" in with_ticket
    assert "Already done" not in without["response"]["text"] and message.message_id in without["response"]["text"]


def test_the_recorded_ticket_is_the_latest_one_the_saga_log_names() -> None:
    assert recorded_ticket([]) is None
    assert recorded_ticket([_event("saga_failed", 2, {"ticket_id": None, "ticket": "failed"})]) is None
    history = [_event("escalated", 1, {"ticket_id": "TCK-1"}), _event("saga_failed", 3, {"ticket_id": "TCK-1"}),
               _event("step_completed", 4, {"ticket_id": "not a ticket record"})]
    assert recorded_ticket(history) == "TCK-1"


def test_a_failed_sagas_ticket_puts_unconfirmed_reversals_first() -> None:
    message, history = _failed_saga_with_every_kind_of_effect()
    comp = failed_saga_compensation(saga_effects(message, history), lambda a: f"http://o/actions/{a}/undo")
    assert [e.action_id for e in comp.undone] == ["act_1"]
    assert sorted(e.action_id for e in comp.pending) == ["act_2", "act_3"]
    assert [e.action_id for e in comp.kept] == ["act_4"]
    summary = ticket_summary(message, "saga_failed", comp, failure="escalation_router: tickets API down")
    assert "Saga failed for good" in summary and "tickets API down" in summary
    assert "REVERSAL PENDING: cancel act_2 on 55555 could not be undone automatically; undo it by hand " \
        "(http://o/actions/act_2/undo)" in summary


# ---- settings --------------------------------------------------------------------------------------------


def test_compensation_settings_are_read_with_every_other_setting(monkeypatch) -> None:
    monkeypatch.setenv("SUPPORTMESH_COMPENSATION_DEADLINE_S", "12.5")
    monkeypatch.setenv("SUPPORTMESH_COMPENSATION_BACKOFF_MAX_S", "2")
    settings = Settings()
    assert (settings.compensation_deadline_s, settings.compensation_backoff_max_s) == (12.5, 2.0)
    monkeypatch.setenv("SUPPORTMESH_COMPENSATION_DEADLINE_S", "0")
    with pytest.raises(ValidationError, match="compensation_deadline_s"):
        Settings()


def test_a_guests_ticket_says_the_email_is_unverified() -> None:
    comp = failed_saga_compensation(saga_effects(
        new_message(session_id="s1", customer_email="user@example.com", customer_message="help"), []), str)
    for verified, warned in ((False, True), (True, False)):
        message = new_message(session_id="s1", customer_email="user@example.com", customer_message="help",
                              customer_verified=verified)
        assert ("NOT SIGNED IN" in ticket_summary(message, "critical_sentiment", comp)) is warned
