"""Recovery, once per mesh: JetStream's dead letters and the sweeper of stalled sagas.

- Dead letters: JetStream's MAX_DELIVERIES advisories (every delivery of a step died with its process) and
  MSG_TERMINATED advisories (an actor terminated a poison message), kept in a stream of their own. A real
  message goes to the route's error handler; what cannot go on is failed and answered; nothing loops.
- The sweeper: sagas of the running index (`saga_running`) with no event and no state change for
  `stall_after_s` are resumed from the saga log (their current step published again), at most `max_sweeps`
  times per step, then handed to the error handler (or failed, when stuck at the error handler itself).
  A `waiting` saga is never stalled: the sweeper fires its timer itself once the deadline is `wait_grace_s`
  past with no wake recorded (the schedule was lost), and republishes the resume of a decided wait that no
  step took up (its decider died before publishing it); see `saga.waits`.

It runs in a process that wires it next to an actor runtime (by default the error handler's: its actor opens
the handoff ticket of a saga recovery fails), and only while it holds the lease: a key in the KV bucket
`saga_recovery` whose TTL is the lease time. The holder renews it with a revision-checked update; when the
holder dies the key expires and another replica's `create` wins; a holder that stops deletes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from saga import transport, waits
from saga.log import TERMINAL, SagaEvent, SagaState, SagaStatus, ensure_bucket
from saga.protocol import MESSAGE_ID, Message
from saga.replay import replay
from saga.runtime.core import Core
from saga.runtime.failing import fail_saga
from saga.runtime.failures import poison_id, to_error_handler

log = logging.getLogger("saga.recovery")

LEASE_BUCKET = "saga_recovery"
LEASE_KEY = "leader"
# The sagas the sweeper watches: the ones still moving (or that should be).
SWEPT: frozenset[str] = frozenset({"running", "compensating"})


class Recovery:
    """Dead letters and the sweeper, run by the holder of the mesh's recovery lease."""

    def __init__(self, core: Core, *, lease_s: float = 15.0, fetch_timeout_s: float = 1.0,
                 holder: str | None = None) -> None:
        self.core = core
        self.settings = core.settings
        self.lease_s = lease_s
        self.fetch_timeout_s = fetch_timeout_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.leader = False
        self._revision = 0
        self._lease_kv: Any = None
        self._dlq_sub: Any = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        """The actor whose process runs recovery (it appears as the actor of recovery's records)."""
        return self.core.name

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the dead-letter stream and the lease bucket, then run the lease and the recovery loops
        (they act only while this instance holds the lease). Call after the runtime started."""
        await transport.ensure_deadletter_stream(self.core.js, self.settings)
        self._lease_kv = await ensure_bucket(self.core.js, LEASE_BUCKET, self.lease_s,
                                            replicas=self.core.settings.nats_replicas)
        self.core.hooks.on_started(self.name, recovery=True)
        await self._renew()
        self._tasks = [asyncio.create_task(loop(), name=f"recovery-{loop.__name__}")
                       for loop in (self._lease_loop, self._dead_letter_loop, self._sweep_loop, self._storage_loop)]

    async def stop(self) -> None:
        """Stop the loops and give the lease up (another replica takes over at once)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.leader:
            with contextlib.suppress(Exception):
                await self._lease_kv.delete(LEASE_KEY, last=self._revision)
        self.leader = False

    # ---- the lease --------------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Take the lease when it is free, or keep it when held: one revision-checked write."""
        body = self.holder.encode()
        try:
            if self.leader:
                self._revision = await self._lease_kv.update(LEASE_KEY, body, last=self._revision)
            else:
                self._revision = await self._lease_kv.create(LEASE_KEY, body)
                log.info("recovery lease taken", extra={"actor": self.name})
            self.leader = True
        except KeyWrongLastSequenceError:
            if self.leader:
                log.warning("recovery lease lost", extra={"actor": self.name})
            self.leader = False
        except Exception as exc:  # NATS unreachable: do not act on a lease that may have passed on
            self.leader = False
            log.warning("recovery lease not renewed: %s", exc, extra={"actor": self.name})

    async def _lease_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.lease_s / 3)
            await self._renew()

    # ---- dead letters -----------------------------------------------------------------------------

    async def _bind_dead_letters(self) -> None:
        stream = transport.deadletter_stream_name(self.settings)
        config = ConsumerConfig(durable_name="deadletters", ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
                                max_deliver=5)
        await self.core.js.add_consumer(stream, config)
        self._dlq_sub = await self.core.js.pull_subscribe_bind("deadletters", stream=stream)

    async def _dead_letter_loop(self) -> None:
        while not self._stopping.is_set():
            if not self.leader:
                await asyncio.sleep(self.fetch_timeout_s)
                continue
            try:
                if self._dlq_sub is None:
                    await self._bind_dead_letters()
                msgs = await self._dlq_sub.fetch(10, timeout=self.fetch_timeout_s)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                log.warning("dead-letter fetch failed: %s", exc, extra={"actor": self.name})
                self._dlq_sub = None
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                try:
                    await self.dead_letter(m)
                    await m.ack()
                except Exception:
                    log.exception("dead letter not handled; will retry", extra={"actor": self.name})
                    with contextlib.suppress(Exception):
                        await m.nak(delay=1.0)

    async def dead_letter(self, advisory: Msg) -> None:
        """A message JetStream gave up on (MAX_DELIVERIES: its process died on every delivery) or one an
        actor terminated (poison). Route a real message to the error handler, answer what cannot go on, and
        never let anything loop."""
        core = self.core
        adv = orjson.loads(advisory.data)
        seq, consumer = int(adv.get("stream_seq", 0)), str(adv.get("consumer", "?"))
        deliveries = int(adv.get("deliveries") or 0)
        core.hooks.on_dead_letter(consumer)
        try:
            raw = await core.js.get_msg(self.settings.stream_name, seq)
        except NotFoundError:
            raw = None  # a work-queue stream already dropped it (e.g. a terminated message)
        terminated = ".MSG_TERMINATED." in advisory.subject
        if terminated:
            await self._poison_handled(consumer, seq, deliveries)
        elif raw is not None and raw.data:
            message: Message[Any] | None = None
            with contextlib.suppress(Exception):
                message = core.app.message_type.from_bytes(raw.data)
            if message is not None:
                # Continue the saga's trace: the dead hop's own headers carry it.
                carrier = await self._trace_carrier(message.message_id, headers=dict(raw.headers or {}))
                with core.hooks.recovery_span(f"dead_letter {core.app.subject_for(consumer)}", carrier):
                    await self._max_deliveries(message, consumer, seq, deliveries)
        if raw is not None:
            with contextlib.suppress(Exception):
                await core.js.delete_msg(self.settings.stream_name, seq)
        log.warning("dead letter from %s (stream seq %s, %s) handled", consumer, seq,
                    "terminated" if terminated else "max deliveries", extra={"actor": self.name})

    async def _max_deliveries(self, message: Message[Any], consumer: str, seq: int, deliveries: int) -> None:
        """Every delivery of this step died with its process: the error handler decides, unless the error
        handler is the one dying (then the saga is failed and answered rather than looped)."""
        reason = f"{deliveries or '?'} deliveries to {consumer} ended without an answer"
        route = message.route
        await self.core.saga.record(SagaEvent(
            message_id=message.message_id, kind="dead_lettered", actor=consumer, step_index=route.current_step,
            trace_id=message.metadata.trace_id,
            data={"stream_seq": seq, "reason": "max_deliveries", "deliveries": deliveries or None},
        ))
        if route.current_step < len(route.steps) and route.current != route.error_handler:
            await to_error_handler(self.core, message, kind="dead_letter", detail=reason, attempts=deliveries,
                                   actor=consumer)
        else:
            await fail_saga(self.core, message, actor=consumer, detail=reason, attempt=max(deliveries, 1))

    async def _poison_handled(self, consumer: str, seq: int, deliveries: int) -> None:
        """A terminated (poison) message: note that recovery saw it. When its record names a saga that is
        still running, that saga lost its message and can never finish: it is failed and answered, with the
        session and reply subject the saga log recorded at its start."""
        saga = self.core.saga
        record_id = poison_id(consumer, seq)
        await saga.record(SagaEvent(message_id=record_id, kind="dead_lettered", actor=consumer, step_index=0,
                                    data={"stream_seq": seq, "reason": "terminated"}))
        record = await saga.get_event(record_id, 0, "poison_message", attempt=max(deliveries, 1))
        message_id = record.data.get("message_id") if record else None
        if not isinstance(message_id, str) or not MESSAGE_ID.match(message_id):
            return  # nothing names a saga: no one to answer
        state = await saga.state(message_id)
        if state is None or state.status in TERMINAL:
            return  # no saga of ours, or one that already ended (and was answered)
        history = await saga.history(message_id)
        message = replay(history, self.core.app.message_type)
        if message is None or record is None:
            return
        carrier = await self._trace_carrier(message_id, history=history)
        with self.core.hooks.recovery_span(f"dead_letter {self.core.app.subject_for(consumer)}", carrier):
            await fail_saga(self.core, message, actor=consumer, attempt=max(deliveries, 1),
                            detail=f"poison message on {consumer}: {record.data.get('error', '')}"[:500],
                            data={"reason": "poison", "poison_record": record.key}, history=history)

    async def _trace_carrier(self, message_id: str, *, headers: dict[str, str] | None = None,
                             history: list[SagaEvent] | None = None) -> dict[str, str] | None:
        """The W3C context in which recovery moves a saga, so that it stays one trace: the hop's own headers,
        else the one recorded with `saga_started`; None when neither is known."""
        carrier = {k: v for k, v in (headers or {}).items() if k in transport.TRACE_HEADERS}
        if "traceparent" not in carrier:
            if history is not None:
                started = next((e for e in history if e.kind == "saga_started"), None)
            else:
                started = await self.core.saga.get_event(message_id, 0, "saga_started")
            data = started.data if started else {}
            carrier = {k: data[k] for k in transport.TRACE_HEADERS if isinstance(data.get(k), str)}
        return carrier if "traceparent" in carrier else None

    # ---- stalled sagas ----------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.sweep_interval_s)
            if not self.leader:
                continue
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep failed", extra={"actor": self.name})

    async def sweep_once(self, now: float | None = None) -> list[str]:
        """Resume sagas that stopped moving (`running` or `compensating`, no event and no state change for
        `stall_after_s`): rebuild the message from the saga log and publish its current step again, under an
        id of its own (the lost hop's id may still be in the duplicate window). After `max_sweeps`
        resumptions of one step the saga goes to the error handler, or, when it is stuck at the error handler
        itself, is failed and answered. A saga whose start was never recorded is marked failed. Returns the
        ids of the sagas it acted on."""
        now = now or time.time()
        acted: list[str] = []
        for state in await self.core.saga.running():
            if state.status == "waiting":
                try:
                    if await self._sweep_waiting(state, now):
                        acted.append(state.message_id)
                except Exception:
                    log.exception("sweeping a waiting saga failed", extra=_about(self.name, state))
                continue
            if state.status not in SWEPT or now - state.updated_at < self.settings.stall_after_s:
                continue
            try:
                if await self._sweep_saga(state, now):
                    acted.append(state.message_id)
            except Exception:
                # One saga that cannot be swept (say, a start record that no longer parses) must not stop
                # the others from being swept.
                log.exception("sweeping saga failed", extra=_about(self.name, state))
        return acted

    async def _sweep_saga(self, state: SagaState, now: float) -> bool:
        """Resume (or fail) one saga whose state has not changed for the stall time; True when it acted."""
        history = await self.core.saga.history(state.message_id)
        if history and now - max(e.ts for e in history) < self.settings.stall_after_s:
            return False  # the log moved even if the state record lagged behind
        message = replay(history, self.core.app.message_type)
        if message is None:
            await self._fail_unstarted(state, history, now - state.updated_at)
            return True
        if message.route.current_step >= len(message.route.steps):
            return False
        # One trace per saga: the resumption continues the trace the saga started in.
        carrier = await self._trace_carrier(message.message_id, history=history)
        subject = message.subject_for(message.route.current)
        with self.core.hooks.recovery_span(f"resume {subject}", carrier, message):
            await self._resume_stalled(message, history, now - max(e.ts for e in history), state.status)
        return True

    async def _sweep_waiting(self, state: SagaState, now: float) -> bool:
        """A waiting saga: past its deadline and the grace with no wake, fire the timer (the same single-winner
        claim as the schedule's); a wake decided `wait_grace_s` ago whose saga still waits gets its resume
        published again, within the duplicate window (so repairs add at most one copy). A waiting state
        whose wait was never recorded (its process died in between) is resumed like a stalled saga."""
        grace, saga = self.settings.wait_grace_s, self.core.saga
        deadline = state.deadline if state.deadline is not None else state.updated_at + self.settings.stall_after_s
        overdue = now >= deadline + grace
        if not overdue:
            if now - state.updated_at < grace or not state.wait_seq:
                return False
            decided = await saga.get_event(state.message_id, state.step_index, "signal_received", seq=state.wait_seq)
            if decided is None:
                return False  # waiting, as it should
        history = await saga.history(state.message_id)
        wait = waits.find_wait(history, state.step_index)
        prefix = self.core.app.subject_prefix
        if wait is None or wait.seq < (state.wait_seq or 1):
            if not overdue:
                return False
            message = replay(history, self.core.app.message_type)
            if message is None:
                return False
            await self._resume_stalled(message, history, now - state.updated_at, "running")
            return True
        if wait.wake is None:
            if not overdue:
                return False
            carrier = wait.link or await self._trace_carrier(state.message_id, history=history)
            with self.core.hooks.recovery_span(f"timer {self.core.app.subject_for(wait.started.actor)}", carrier):
                await waits.wake(saga, self.core.js, prefix, history, wait, "timer", source="sweeper")
            log.warning("fired an overdue wait's timer (%s, %.0fs past its deadline)", wait.signal,
                        now - wait.deadline, extra=_about(self.name, state))
            return True
        if not grace <= now - wait.wake.ts < self.settings.duplicate_window_s or waits.moved_on(history, wait):
            return False
        await waits.publish_resume(self.core.js, prefix, wait)
        return True

    async def _fail_unstarted(self, state: SagaState, history: list[SagaEvent], stalled_s: float) -> None:
        """A saga state with no recorded start: its front end writes `saga_state` and `saga_started` at once
        and refuses the message when either failed, so nothing ever ran and nobody waits for an answer. It can
        never be resumed (the first message is in `saga_started`): mark it failed, so it stops looking alive."""
        detail = (f"saga_started was never recorded ({len(history)} events, state unchanged for {stalled_s:.0f}s): "
                  "the gateway refused the message, nothing to resume or answer")
        await self.core.saga.record(SagaEvent(message_id=state.message_id, kind="saga_failed", actor=self.name,
                                              step_index=state.step_index, trace_id=state.trace_id,
                                              data={"error": detail, "reason": "not_started"}))
        await self.core.saga.set_state(state.message_id, status="failed", step_index=state.step_index,
                                       actor=state.actor or self.name)
        log.warning("saga never started: marked failed (%s)", detail, extra=_about(self.name, state))

    async def _resume_stalled(self, message: Message[Any], history: list[SagaEvent], stalled_s: float,
                              status: SagaStatus) -> None:
        core, route = self.core, message.route
        step = route.current_step
        sweeps = sum(1 for e in history if e.kind == "redelivered" and e.data.get("source") == "sweeper"
                     and e.step_index == step)
        if sweeps >= self.settings.max_sweeps:
            detail = f"no progress for {self.settings.stall_after_s:.0f}s after {sweeps} resumptions"
            if route.current == route.error_handler:
                # Not even the error handler moves it: nobody else can, so fail it and answer.
                await fail_saga(core, message, actor=route.current, detail=detail, attempt=sweeps, history=history)
            else:
                await to_error_handler(core, message, kind="stalled", attempts=sweeps, actor=route.current,
                                       detail=detail)
            return
        await core.saga.record(SagaEvent(
            message_id=message.message_id, kind="redelivered", actor=route.current, step_index=step,
            seq=sweeps + 1, trace_id=core.hooks.trace_id() or message.metadata.trace_id,
            data={"source": "sweeper", "stalled_s": round(stalled_s, 1)}))
        core.hooks.on_redelivery(route.current, "sweeper")
        # The status stays what it was (a compensating saga is still compensating); the state's time moves on.
        await core.saga.set_state(message.message_id, status=status, step_index=step, actor=route.current)
        await core.publish(message, resume=sweeps + 1)
        log.warning("resumed stalled saga at step %s (%s)", step, route.current,
                    extra={"actor": self.name, "message_id": message.message_id,
                           "trace_id": message.metadata.trace_id})

    # ---- storage ----------------------------------------------------------------------------------

    async def _storage_loop(self, interval_s: float = 5.0) -> None:
        """Bytes used and size limit of every stream and bucket of the mesh (the storage alert compares the
        two), exported by the lease holder only."""
        while not self._stopping.is_set():
            if self.leader:
                for stream in transport.storage_streams(self.settings, self.core.app.buckets):
                    with contextlib.suppress(Exception):
                        info = await self.core.js.stream_info(stream)
                        self.core.hooks.on_storage(stream, info.state.bytes or 0, info.config.max_bytes or -1)
            await asyncio.sleep(interval_s)


def _about(actor: str, state: SagaState) -> dict[str, Any]:
    """Log fields of a line about a swept saga: written outside its trace, so its trace id is given."""
    return {"actor": actor, "message_id": state.message_id, "trace_id": state.trace_id}
