"""Waits offline: what a handler may ask for, the keys that make one wake per wait, the timer's time, and
reading a wait back from a history."""

from __future__ import annotations

import math

import pytest

from saga.actor import StepResult, Wait, check_signal
from saga.errors import PermanentError
from saga.log import SagaEvent, event_key
from saga.runtime.waiting import check_waiting_result
from saga.signals import send_signal
from saga.waits import at_time, find_wait, moved_on, resume_id, timer_subject


@pytest.mark.parametrize("name", ["approval", "a", "confirm_2", "x" * 32])
def test_good_signal_names(name: str) -> None:
    assert check_signal(name) == name
    assert Wait(name, 1.0).signal == name


@pytest.mark.parametrize("name", ["", "Approval", "2fa", "_x", "a-b", "a.b", "a b", "a*", "x" * 33, None])
def test_bad_signal_names_are_refused(name: object) -> None:
    with pytest.raises(ValueError):
        Wait(name, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, 0.0, math.nan, math.inf, True, "5"])
def test_a_timeout_must_be_a_finite_positive_number(timeout: object) -> None:
    with pytest.raises(ValueError):
        Wait("approval", timeout)  # type: ignore[arg-type]


def test_a_waiting_result_may_not_complete_the_step() -> None:
    assert check_waiting_result(StepResult(wait=Wait("approval", 5)), 3600) == Wait("approval", 5)
    with pytest.raises(PermanentError):
        check_waiting_result(StepResult(enrichment={"x": 1}, wait=Wait("approval", 5)), 3600)
    with pytest.raises(PermanentError):
        check_waiting_result(StepResult(remaining_route=[], wait=Wait("approval", 5)), 3600)


def test_a_wait_may_not_outlast_the_saga_log() -> None:
    """Its record, its state and its running-index entry would expire before it ends: it would never resume."""
    assert check_waiting_result(StepResult(wait=Wait("approval", 3599)), 3600).timeout_s == 3599
    with pytest.raises(PermanentError, match="outlast the saga log"):
        check_waiting_result(StepResult(wait=Wait("approval", 3600)), 3600)


@pytest.mark.parametrize("setting", ["confirmation_timeout_s", "approval_timeout_s"])
def test_settings_refuse_a_wait_timeout_the_saga_log_would_not_outlive(setting: str) -> None:
    from config.settings import Settings

    short = {"confirmation_timeout_s": 60, "approval_timeout_s": 60}
    assert getattr(Settings(saga_ttl_s=7200, **{**short, setting: 7199}), setting) == 7199
    with pytest.raises(ValueError, match=f"{setting}.*shorter than saga_ttl_s"):
        Settings(saga_ttl_s=7200, **{**short, setting: 7200})


def test_signal_and_timer_share_one_key_per_wait() -> None:
    assert event_key("m1", 3, "wait_started", seq=2) == "m1.0003.wait_started.2"
    assert event_key("m1", 3, "signal_received", seq=2) == event_key("m1", 3, "timer_fired", seq=2) == "m1.0003.wake.2"
    assert event_key("m1", 3, "timer_fired", seq=1) != event_key("m1", 3, "timer_fired", seq=2)


def test_timer_time_subject_and_resume_id() -> None:
    assert at_time(0.0) == "1970-01-01T00:00:00Z"
    assert at_time(10.2) == "1970-01-01T00:00:11Z"  # rounded up: a timer never fires early
    assert timer_subject("app.x", "m1", 3, 2) == "saga_timer.app.x.m1.0003.2"
    assert resume_id("m1", 3, 2) == "m1:3:w2"


def _event(kind: str, step: int = 0, seq: int = 0, **data: object) -> SagaEvent:
    return SagaEvent(message_id="m1", kind=kind, actor="a", step_index=step, seq=seq, data=dict(data))  # type: ignore[arg-type]


def test_the_latest_wait_and_whether_its_step_moved_on() -> None:
    history = [_event("saga_started"), _event("wait_started", 1, 1, signal="s"), _event("timer_fired", 1, 1),
               _event("wait_started", 1, 2, signal="t")]
    wait = find_wait(history)
    assert wait is not None and wait.seq == 2 and wait.signal == "t" and wait.wake is None
    first = find_wait(history, 1, 1)
    assert first is not None and first.wake is not None and first.wake.kind == "timer_fired"
    assert moved_on(history, first) and not moved_on(history, wait)
    assert moved_on([*history, _event("step_completed", 1)], wait)
    assert find_wait(history, step=0) is None


async def test_send_signal_refuses_bad_names_and_payloads_before_any_io() -> None:
    with pytest.raises(ValueError):
        await send_signal(None, None, "m1", "Bad Name", {}, subject_prefix="p")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await send_signal(None, None, "m1", "ok", {"x": object()}, subject_prefix="p")  # type: ignore[arg-type]
    assert await send_signal(None, None, "not a valid id!", "ok", {}, subject_prefix="p") == "not_waiting"  # type: ignore[arg-type]


def test_a_resumed_step_span_links_to_the_waiting_span() -> None:
    from observability.hooks import _links

    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    links = _links([{"traceparent": f"00-{trace_id}-{span_id}-01"}, {"traceparent": "garbage"}])
    assert len(links) == 1
    assert format(links[0].context.trace_id, "032x") == trace_id and format(links[0].context.span_id, "016x") == span_id
    assert _links(None) == []
