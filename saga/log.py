"""The saga log: every step, retry, route change, side effect and compensation of a message, durably, in
JetStream KV.

- Bucket `saga_log`: one key per event, `<message_id>.<step:04d>.<kind>[.<n>]`. Keys are deterministic and
  written with KV `create`, so recording the same fact twice is a no-op (never a second record). Kinds that
  happen once per step (`step_completed`, `route_changed`, ...) have no counter; repeatable kinds carry the
  attempt (or the action's sequence number) as `<n>`; a resumption decided by recovery is keyed
  `redelivered.<source>.<n>`, one counter per source. A saga's history is read in write order with the
  subject filter `<message_id>.>`.
- Buckets `saga_state` and `saga_running`: where each saga is, and the sagas not finished yet (`saga.state`).
- Waits (`saga.waits`): `wait_started` is counted per wait at its step; `signal_received` and `timer_fired`
  share one key per wait (`<message_id>.<step:04d>.wake.<n>`), so the create that writes one decides the
  wait. A waiting saga's state is `waiting`, with the signal, the wait's number and its deadline.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field

from saga.direct import ensure_bucket, read_subjects
from saga.jetstream import ambiguous_writes
from saga.state import RUNNING_BUCKET, STATE_BUCKET, TERMINAL, SagaState, SagaStates, SagaStatus

__all__ = ["EVENT_KINDS", "LOG_BUCKET", "RUNNING_BUCKET", "STATE_BUCKET", "TERMINAL", "SagaEvent", "SagaLog",
           "SagaState", "SagaStatus", "ensure_bucket", "event_key"]

LOG_BUCKET = "saga_log"

EventKind = Literal[
    "saga_started",
    "step_started",  # no longer written (the hop is the record of a dispatch); read in logs of older versions
    "step_completed",
    "step_failed",
    "retry_scheduled",
    "route_changed",
    "action_executed",
    "compensation_started",
    "compensation_completed",
    "compensation_failed",
    "redelivered",
    "escalated",
    "poison_message",
    "dead_lettered",
    "saga_completed",
    "saga_failed",
    "wait_started",
    "signal_received",
    "timer_fired",
    "signal_buffered",
]
EVENT_KINDS: frozenset[str] = frozenset(EventKind.__args__)  # type: ignore[attr-defined]
# Facts that happen at most once per step: their key has no counter.
ONCE_PER_STEP: frozenset[str] = frozenset(
    {"saga_started", "step_completed", "route_changed", "escalated", "saga_completed", "saga_failed"}
)



class SagaEvent(BaseModel):
    """One fact of a saga's history."""

    model_config = ConfigDict(extra="forbid")

    message_id: str
    kind: EventKind
    actor: str
    step_index: int = Field(ge=0)
    attempt: int = Field(default=1, ge=0)
    seq: int = Field(default=0, ge=0)
    ts: float = Field(default_factory=time.time)
    duration_ms: float | None = None
    trace_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    revision: int | None = None  # the KV revision, filled in when read back

    @property
    def key(self) -> str:
        """The deterministic KV key of this event."""
        if self.kind == "signal_buffered":  # one per signal name and saga, whatever step it came during
            return f"{self.message_id}.signal.{self.data['signal']}"
        source = self.data.get("source")
        return event_key(self.message_id, self.step_index, self.kind, self.attempt, self.seq,
                         source if isinstance(source, str) else None)


# Kinds counted per side effect (`seq` names the action) or per wait at the step (`seq` is its number), not
# per delivery attempt.
PER_ACTION: frozenset[str] = frozenset(
    {"action_executed", "compensation_started", "compensation_completed", "compensation_failed", "wait_started"}
)
# The two ways a wait ends share one key per wait (`<id>.<step>.wake.<n>`): the `create` that writes one of
# them is the decision, and the other can never be written for that wait.
WAKE_KINDS: frozenset[str] = frozenset({"signal_received", "timer_fired"})
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def event_key(message_id: str, step_index: int, kind: str, attempt: int = 1, seq: int = 0,
              source: str | None = None) -> str:
    """Key of an event: `<message_id>.<step>.<kind>` for once-per-step facts, else with a counter."""
    base = f"{message_id}.{step_index:04d}.{kind}"
    if kind in ONCE_PER_STEP:
        return base
    if kind in PER_ACTION:
        return f"{base}.{seq}"
    if kind in WAKE_KINDS:
        return f"{message_id}.{step_index:04d}.wake.{seq}"
    if kind == "redelivered" and seq:
        # A resumption decided by recovery (seq > 0) is counted apart from JetStream's redeliveries, and per
        # source: the sweeper and the error handler may resume the same step, and neither record may
        # hide the other's (each budget is counted from its own events).
        return f"{base}.{_KEY_UNSAFE.sub('_', source or 'recovery')}.{seq}"
    return f"{base}.{attempt}"


class SagaLog(SagaStates):
    """Access to the `saga_log` bucket, and (`SagaStates`) to the `saga_state` and `saga_running` buckets."""

    def __init__(self, js: JetStreamContext, log_kv: Any, state_kv: Any, running_kv: Any, *,
                 read_timeout_s: float = 5.0, on_recorded: Callable[[str], None] | None = None) -> None:
        # js._nc: core publishes for record_nowait, direct gets for history and the listings.
        super().__init__(js._nc, state_kv, running_kv, read_timeout_s=read_timeout_s)
        self._js = js
        # Told the kind of every event written (the process wiring counts them, see observability.metrics).
        self._on_recorded = on_recorded or _ignore
        self._log = log_kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, ttl_s: float = 7 * 24 * 3600, read_timeout_s: float = 5.0,
                   log_max_bytes: int = -1, state_max_bytes: int = -1, replicas: int | None = None,
                   on_recorded: Callable[[str], None] | None = None) -> SagaLog:
        """Open the buckets, creating them (file storage, retention TTL, size limit; -1 = none) when missing.
        `replicas`: brought to this many (None: a new bucket gets one, an existing one is left as it is).
        `marker_ttl_s` (an attribute, 5 s) is how long an ended saga's purge marker stays in the running index."""
        log_kv, state_kv, running_kv = await asyncio.gather(
            ensure_bucket(js, LOG_BUCKET, ttl_s, log_max_bytes, replicas),
            ensure_bucket(js, STATE_BUCKET, ttl_s, state_max_bytes, replicas),
            ensure_bucket(js, RUNNING_BUCKET, ttl_s, state_max_bytes, replicas),
        )
        return cls(js, log_kv, state_kv, running_kv, read_timeout_s=read_timeout_s, on_recorded=on_recorded)

    # ---- events ---------------------------------------------------------------------------------

    async def record(self, event: SagaEvent) -> bool:
        """Write an event once. Returns False when the same fact was already recorded.

        Every writer of the saga log goes through here (or `record_nowait`), so this is where events are
        counted (`on_recorded`): once per record created."""
        payload = orjson.dumps(event.model_dump(mode="json", exclude={"revision"}, exclude_none=True))
        with ambiguous_writes() as retried:
            try:
                await self._log.create(event.key, payload)
            except KeyWrongLastSequenceError:
                # Someone recorded this fact first, or we did: a write retried after an unanswered attempt (a
                # leader election, saga/jetstream.py) is refused when that attempt had landed. The same bytes (the
                # same event, down to its timestamp) are then our own write.
                if not (retried[0] and await self._stored_is(event.key, payload)):
                    return False
        self._on_recorded(event.kind)
        return True

    async def _stored_is(self, key: str, payload: bytes) -> bool:
        try:
            return (await self._log.get(key)).value == payload
        except KeyNotFoundError:
            return False

    async def record_nowait(self, event: SagaEvent) -> None:
        """Write an informational event without waiting for the ack. It carries the same "create only"
        condition as `record` (expected last subject sequence 0), so a duplicate is dropped by the server;
        being published on the same connection, it is stored before any later awaited write of ours."""
        payload = event.model_dump(mode="json", exclude={"revision"}, exclude_none=True)
        await self._nc.publish(
            f"$KV.{LOG_BUCKET}.{event.key}", orjson.dumps(payload),
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )
        # Counted when sent: the server's verdict is not awaited (a duplicate of these informational
        # events, a redelivery recorded twice, is rare and harmless in a rate).
        self._on_recorded(event.kind)

    async def get_event(
        self, message_id: str, step_index: int, kind: str, attempt: int = 1, seq: int = 0
    ) -> SagaEvent | None:
        """One event by its identity, or None."""
        try:
            entry = await self._log.get(event_key(message_id, step_index, kind, attempt, seq))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return SagaEvent.model_validate({**orjson.loads(entry.value), "revision": entry.revision})

    async def history(self, message_id: str) -> list[SagaEvent]:
        """Every event of a saga, in the order they were written.

        Read with JetStream's batched direct get (`saga.direct`): one request per page and no consumer, so a
        read under load costs the server no consumer set-up and cannot leave one behind. A server that does
        not answer in time raises nats' TimeoutError (the gateway answers 503)."""
        stored = await read_subjects(self._nc, f"KV_{LOG_BUCKET}", f"$KV.{LOG_BUCKET}.{message_id}.>",
                                     timeout_s=self._read_timeout_s)
        return [SagaEvent.model_validate({**orjson.loads(m.data), "revision": m.seq}) for m in stored if m.data]

    async def watch(self, message_id: str, *, idle_timeout_s: float | None = None) -> AsyncIterator[SagaEvent]:
        """The saga's history, then its new events as they are written (until the caller stops, or no event
        arrives for `idle_timeout_s`)."""
        async for event in self._iterate(message_id, idle_timeout_s=idle_timeout_s):
            yield event

    async def _iterate(self, message_id: str, *, idle_timeout_s: float | None = None) -> AsyncIterator[SagaEvent]:
        watcher = await self._log.watch(f"{message_id}.>", ignore_deletes=True)
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=idle_timeout_s or 3600.0)
                except (asyncio.TimeoutError, TimeoutError):
                    return
                if entry is None:  # the watcher's end-of-history marker: keep following
                    continue
                if entry.value:
                    yield SagaEvent.model_validate({**orjson.loads(entry.value), "revision": entry.revision})
        finally:
            await watcher.stop()

def _ignore(kind: str) -> None:
    """The default `on_recorded`: events are not counted."""
