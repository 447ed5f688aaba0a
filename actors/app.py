"""The support mesh as a `saga.app.SagaApp`: its message (payload and subjects), its error handler and
answering step, its routes, its results store and its answer for a saga that cannot finish."""

from __future__ import annotations

from actors.domain import ANSWERING_ACTOR, ERROR_HANDLER, ESCALATION, HAPPY_PATH, WITH_ACTION, Message
from actors.results import ResultStore, failed_enrichment, fallback_result, recorded_ticket
from saga.app import SagaApp

SUPPORT = SagaApp(
    message_type=Message,
    error_handler=ERROR_HANDLER,
    answering_actor=ANSWERING_ACTOR,
    result_store=ResultStore,
    failed_answer=failed_enrichment,
    failed_result=fallback_result,
    recorded_ticket=recorded_ticket,
    routes={"happy_path": HAPPY_PATH, "with_action": WITH_ACTION, "escalation": ESCALATION},
)
