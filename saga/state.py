"""Where each saga is: its status in JetStream KV, and the index of the sagas not finished yet.

- Bucket `saga_state`: one key per message with its status, written on status transitions after the start
  (compensating, waiting, completed / escalated / failed, resumed by recovery; a compensating step also
  refreshes it while undo calls are retried, so the sweeper can tell it is alive) with compare-and-set on the
  KV revision so replicas never overwrite each other, and never moved backwards (a late, redelivered step
  cannot turn a finished saga back into a running one). The current step and the last event time are read
  from the log.
- Bucket `saga_running`: the index of sagas not finished yet, one key per message: created when a saga starts
  (or put when recovery reopens one) and purged when it reaches a terminal state, so the sweeper reads the
  running sagas only, not every `saga_state` key. Its value is the saga's state as it started: a saga that
  has not changed status since (the happy path until it ends) has no `saga_state` key, and `state` reads it
  here (one write per saga less than a state of its own). The first transition creates the `saga_state` key;
  a terminal one writes it before the purge, so a reader never finds neither. The purge's marker expires
  after `marker_ttl_s` (a delete's would stay for the bucket's TTL, and every sweep would read them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field

from saga.direct import live_entries

STATE_BUCKET = "saga_state"
RUNNING_BUCKET = "saga_running"

# `waiting`: a step suspended the saga until a signal or its timer (`saga.waits`); not terminal.
SagaStatus = Literal["running", "waiting", "completed", "compensating", "escalated", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "escalated", "failed"})


class SagaState(BaseModel):
    """Where a saga is: one record per message in `saga_state` (in `saga_running` until its status first changes)."""

    model_config = ConfigDict(extra="forbid")

    message_id: str
    session_id: str | None = None
    status: SagaStatus = "running"
    step_index: int = 0
    actor: str = ""
    updated_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    trace_id: str | None = None
    # Who may read the saga (the application's owner string): set at the start, kept after.
    owner: str | None = None
    # While `waiting`: the awaited signal, the wait's number at its step and its deadline (epoch seconds).
    signal: str | None = None
    wait_seq: int | None = None
    deadline: float | None = None
    revision: int | None = None


class SagaStates:
    """Access to the `saga_state` and `saga_running` buckets (`SagaLog` adds the events' bucket)."""

    def __init__(self, nc: Any, state_kv: Any, running_kv: Any, *, read_timeout_s: float) -> None:
        self._nc = nc  # direct gets for the listings
        self._read_timeout_s = read_timeout_s
        self._state = state_kv
        self._running = running_kv
        self.marker_ttl_s = 5.0

    async def state(self, message_id: str) -> SagaState | None:
        """The saga's current state, or None when unknown. A saga that has not changed status since it started
        has it in the running index only (revision 0: no `saga_state` key yet). When the index holds the purge
        marker of an entry instead, the saga ended between the two reads, and it wrote its state before leaving
        the index: that key is read again. With no marker (it lives `marker_ttl_s`, far longer than the time
        between two reads) the saga is unknown: two reads, not three."""
        stored = await self._stored_state(message_id)
        if stored is not None:
            return stored
        try:
            entry = await self._running.get(message_id)
        except KeyNotFoundError as gone:
            return await self._stored_state(message_id) if gone.op is not None else None
        return _state_of(entry.value, revision=0) if entry.value else None

    async def _stored_state(self, message_id: str) -> SagaState | None:
        """The saga's `saga_state` record (None: none yet, or unknown)."""
        try:
            entry = await self._state.get(message_id)
        except KeyNotFoundError:
            return None
        return _state_of(entry.value, revision=entry.revision) if entry.value else None

    async def start(self, message_id: str, *, step_index: int, actor: str, session_id: str | None,
                    trace_id: str | None, owner: str | None, started_at: float) -> bool:
        """Put a new saga in the running index, its starting state as the entry's value: the whole record of
        its state until its first transition. Created only when absent (False when the saga is in the index
        already: a repeated start of a running saga leaves its first start's state as it is)."""
        state = SagaState(message_id=message_id, session_id=session_id, step_index=step_index, actor=actor,
                          updated_at=started_at, started_at=started_at, trace_id=trace_id, owner=owner)
        try:
            await self._running.create(message_id, _state_bytes(state))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def unindex_if_ended(self, message_id: str) -> None:
        """Take back the index entry of a repeated start (`start`) when its saga has ended already."""
        stored = await self._stored_state(message_id)
        if stored is not None and stored.status in TERMINAL:
            await self._unindex(message_id)

    async def set_state(
        self,
        message_id: str,
        *,
        status: SagaStatus,
        step_index: int,
        actor: str,
        session_id: str | None = None,
        trace_id: str | None = None,
        expected_revision: int | None = None,
        allow_reopen: bool = False,
        owner: str | None = None,
        started_at: float | None = None,
        wait: tuple[str, int, float] | None = None,
    ) -> int | None:
        """Move the saga's state forward with compare-and-set; returns the new revision, or None when the
        change was refused (the saga is already terminal, or already further along).

        `expected_revision` is a hint (the revision the previous step saw): when right it saves a read. 0 says
        the saga has no `saga_state` key yet (it has not changed status since it started): the state is
        created without a read, from the arguments (`session_id`, `trace_id`, `owner`, `started_at`, which the
        message carries); a saga that moved meanwhile refuses the create and is read as usual.
        `allow_reopen` lets recovery move a saga out of `escalated`/`failed` (never out of `completed`).
        `wait` (signal, wait number, deadline) goes with the status `waiting` (running → waiting → running).
        """
        current: SagaState | None = None
        revision = expected_revision
        indexed_in_vain = False  # a create that found the saga there already had its index entry put with it
        for _ in range(16):
            if revision is None:
                current = await self.state(message_id)
                revision = current.revision if current else 0
            if current is not None and not _may_move(current, status, step_index, allow_reopen):
                if indexed_in_vain and current.status in TERMINAL:  # a repeated start of a finished saga
                    with contextlib.suppress(Exception):  # take back its entry (the sweeper would drop it too)
                        await self._unindex(message_id)
                return None
            now = time.time()
            new = SagaState(
                message_id=message_id,
                session_id=session_id or (current.session_id if current else None),
                status=status,
                step_index=step_index,
                actor=actor,
                updated_at=now,
                started_at=(current.started_at if current and current.started_at else started_at or now),
                trace_id=trace_id or (current.trace_id if current else None),
                owner=owner or (current.owner if current else None),
                **(dict(zip(("signal", "wait_seq", "deadline"), wait, strict=True)) if wait else {}),
            )
            body = _state_bytes(new)
            try:
                write = (self._state.update(message_id, body, last=revision) if revision
                         else self._state.create(message_id, body))
                if status in TERMINAL:
                    # The state before the purge of its index entry: a reader that finds no state then finds
                    # the entry, and one that finds no entry finds the state (see `state`).
                    new_revision = await write
                    await self._unindex(message_id)
                    return new_revision
                # The running index moves with the state, written at the same time (no extra round trip).
                index = self._index(message_id, body, current, created=not revision)
                if index is None:
                    return await write
                # Both end before a failure is looked at: an index write in flight could land after the clean-up.
                new_revision, indexed = await asyncio.gather(write, index, return_exceptions=True)
                if isinstance(new_revision, KeyWrongLastSequenceError):
                    indexed_in_vain |= not revision
                if failed := next((o for o in (new_revision, indexed) if isinstance(o, BaseException)), None):
                    raise failed
                return new_revision
            except KeyWrongLastSequenceError:
                # Someone else moved it (or the hint was stale): read again and re-check the guard.
                revision, current = None, None
        raise RuntimeError(f"saga_state for {message_id} kept changing under compare-and-set")

    def _index(self, message_id: str, body: bytes, current: SagaState | None, *, created: bool) -> Any:
        """The write to the running index that goes with a non-terminal state change (None when it needs none):
        a state created without a read (no entry known) or a saga reopened from a terminal state."""
        if (created and current is None) or (current is not None and current.status in TERMINAL):
            return self._running.put(message_id, body)
        return None

    def _unindex(self, message_id: str) -> Any:
        """Take a saga out of the running index: a purge whose marker expires (`marker_ttl_s`)."""
        return self._running.purge(message_id, msg_ttl=self.marker_ttl_s)

    async def running(self) -> list[SagaState]:
        """The states of the sagas in the running index (what the sweeper looks at): the `saga_state` record of
        a saga that has one, else the state it started with (the entry's value). An index entry whose saga has
        ended (its process died between the two writes) is dropped here."""
        out: list[SagaState] = []
        for key, entry in (await live_entries(self._nc, RUNNING_BUCKET, timeout_s=self._read_timeout_s)).items():
            state = await self._stored_state(key)
            if state is None:
                if not entry.data:  # an entry of an older version (an empty value): its state is its record
                    continue
                state = _state_of(entry.data, revision=0)
            if state.status in TERMINAL:
                with contextlib.suppress(Exception):
                    await self._unindex(key)
                continue
            out.append(state)
        return out

    async def states(self) -> list[SagaState]:
        """Every saga state, those only in the running index too (for tests and tools; fine for a demo-sized
        bucket)."""
        stored, indexed = await asyncio.gather(
            live_entries(self._nc, STATE_BUCKET, timeout_s=self._read_timeout_s),
            live_entries(self._nc, RUNNING_BUCKET, timeout_s=self._read_timeout_s))
        out = {key: _state_of(m.data, revision=m.seq) for key, m in stored.items() if m.data}
        out.update({key: _state_of(m.data, revision=0) for key, m in indexed.items() if m.data and key not in out})
        return list(out.values())


def _state_bytes(state: SagaState) -> bytes:
    return orjson.dumps(state.model_dump(mode="json", exclude={"revision"}, exclude_none=True))


def _state_of(data: bytes, *, revision: int) -> SagaState:
    return SagaState.model_validate({**orjson.loads(data), "revision": revision})


def _may_move(current: SagaState, status: str, step_index: int, allow_reopen: bool) -> bool:
    if current.status == "completed":
        return False
    if current.status in TERMINAL and not allow_reopen:
        return False
    if status == "running" and current.status == "running" and step_index < current.step_index:
        return False
    return True
