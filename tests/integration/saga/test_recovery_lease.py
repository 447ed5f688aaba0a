"""Recovery runs once per mesh: the replica holding the lease (a KV key with a TTL) sweeps and handles dead
letters; when it stops, or dies without a word, another replica takes over within the lease time. The sweeper
reads the running-saga index, not every saga state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from saga.recovery import Recovery

from tests.support.harness import Harness
from tests.support.toy_actors import Catcher, Done, Upper
from tests.support.waiting import cancel_until_done

pytestmark = pytest.mark.asyncio

LEASE_S = 2.0


async def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll until `predicate()` is true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def two_recoveries(harness: Harness) -> list[tuple[Recovery, list[float]]]:
    """Two error-handler replicas, each with a recovery instance whose sweeps are counted."""
    out = []
    for _ in range(2):
        rt = await harness.run_actor(Catcher, recovery=False)
        recovery = Recovery(rt.core, lease_s=LEASE_S)
        sweeps: list[float] = []
        sweep_once = recovery.sweep_once

        async def counted(now: float | None = None, _sweep=sweep_once, _log=sweeps) -> list[str]:
            _log.append(time.monotonic())
            return await _sweep(now)

        recovery.sweep_once = counted  # type: ignore[method-assign]
        await recovery.start()
        out.append((recovery, sweeps))
    return out


async def test_only_the_lease_holder_sweeps_and_a_stopped_holder_hands_over_at_once(tmp_path) -> None:
    h = await Harness(tmp_path, sweep_interval_s=0.2).start()
    try:
        (first, first_sweeps), (second, second_sweeps) = await two_recoveries(h)
        assert [first.leader, second.leader] == [True, False]

        await wait_until(lambda: len(first_sweeps) >= 3, 5, "the holder sweeps")
        assert second_sweeps == []  # the other replica never swept

        await first.stop()  # a graceful stop gives the lease up
        took = await wait_until(lambda: second.leader, LEASE_S, "the other replica takes the lease")
        assert took < LEASE_S
        await wait_until(lambda: len(second_sweeps) >= 2, 5, "the new holder sweeps")
        await second.stop()
    finally:
        await h.close()


async def test_a_holder_that_dies_is_replaced_within_the_lease_time(tmp_path) -> None:
    h = await Harness(tmp_path, sweep_interval_s=0.2).start()
    try:
        (first, first_sweeps), (second, second_sweeps) = await two_recoveries(h)
        assert first.leader and not second.leader
        # Dies without a word: its loops stop and the lease is neither renewed nor given up.
        await cancel_until_done(first._tasks)
        died = time.monotonic()
        swept = len(first_sweeps)

        await wait_until(lambda: second.leader, 2 * LEASE_S, "the other replica takes the expired lease")
        assert time.monotonic() - died <= 2 * LEASE_S
        await wait_until(lambda: len(second_sweeps) >= 1, 5, "the new holder sweeps")
        assert len(first_sweeps) == swept
        first.leader = False  # it is dead: nothing to give up
        await first.stop()
        await second.stop()
    finally:
        await h.close()


async def test_the_sweeper_reads_only_running_sagas(harness: Harness) -> None:
    for cls in (Upper, Done, Catcher):
        await harness.run_actor(cls)
    finished = await harness.submit(["upper", "done"], "done soon")
    await harness.wait_terminal(finished.message_id)
    lost = await harness.submit(["upper", "done"], "never published", publish=False)

    running = {s.message_id for s in await harness.saga.running()}
    every = {s.message_id for s in await harness.saga.states()}

    assert running == {lost.message_id}
    assert {finished.message_id, lost.message_id} <= every
