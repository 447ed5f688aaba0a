"""What the README claims of a running `supportmesh up`, proved on one mesh with two processes per actor
(`--replicas 2`), shared by the tests of this module to keep CI time down. In file order:

1. every actor runs as two processes, and a load of chats is handled exactly once, by both replicas;
2. the event stream of a saga that never started ends when the sweeper fails it (`not_started`);
3. `supportmesh chaos --dry-run` kills nothing and says what it would kill;
4. `supportmesh chaos --include-nats` kills nats-server, the runner restarts it and chats are answered again;
5. Ctrl-C (SIGINT) stops every process `up` started and `up` exits 0. This one ends the mesh: it stays last.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import nats
import pytest

from actors import registry
from actors.domain import customer_owner
from gateway.routes.sagas import STREAM_IDLE_TIMEOUT_S
from saga.log import SagaLog
from saga.protocol import new_message_id
from supportmesh.credentials import nats_options

from tests.support.waiting import wait_for
from tests.support import REPO
from tests.support.chaos_load import build_messages, check_invariants, run_load, sagas_since
from tests.support.identity import AUTH
from tests.support.mesh import Mesh
from tests.support.proc_check import alive
from tests.support.sse_client import read_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPLICAS = 2
ACTORS = registry.names(registry.ACTORS)
STALL_AFTER_S = 8.0  # the sweeper's stall time: short, so that a saga that never started is failed soon
MESH_START_S = 150  # what a two-replica mesh may take to start on a slow machine (pytest-timeout counts it)
MAX_DELIVERIES = 4 + 1  # the default SUPPORTMESH_MAX_ATTEMPTS, plus the runtime's extra delivery
MAX_REPUBLISHES = 1 + 2  # the default MAX_REDELIVERIES + MAX_SWEEPS


@pytest.fixture(scope="module")
def replica_mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("replica-mesh"), replicas=REPLICAS, env={
        "SUPPORTMESH_CHAT_DEADLINE_S": "3", "SUPPORTMESH_API_TIMEOUT_S": "6",
        "SUPPORTMESH_STALL_AFTER_S": str(STALL_AFTER_S), "SUPPORTMESH_SWEEP_INTERVAL_S": "1",
    }).start(timeout_s=MESH_START_S)
    try:
        yield m
    finally:
        m.stop()


# ---- 1. two processes per actor, every message handled exactly once ------------------------------------

HANDLED = re.compile(r'^supportmesh_actor_messages_total\{(?=[^}]*actor="(?P<actor>\w+)")'
                     r'(?=[^}]*outcome="(?P<outcome>\w+)")[^}]*\} (?P<n>\S+)$', re.M)


def handled_by_process(mesh: Mesh) -> dict[str, Counter[str]]:
    """Each actor process's own count of the steps it handled, by outcome (completed, memoized, retried...),
    from its /metrics: which replica did the work."""
    out: dict[str, Counter[str]] = {}
    with httpx.Client(timeout=10) as client:
        for name, p in mesh.endpoints["processes"].items():
            if p["kind"] == "actor":
                text = client.get(p["metrics_url"]).text
                out[name] = Counter({m["outcome"]: int(float(m["n"])) for m in HANDLED.finditer(text)})
    return out


@pytest.mark.timeout(MESH_START_S + 150)
def test_two_processes_per_actor_handle_every_message_exactly_once(replica_mesh: Mesh) -> None:
    procs = replica_mesh.endpoints["processes"]
    assert sorted(n for n, p in procs.items() if p["kind"] == "actor") == \
        sorted(f"{a}-{i}" for a in ACTORS for i in range(1, REPLICAS + 1))
    for actor in ACTORS:
        pair = [procs[f"{actor}-{i}"] for i in range(1, REPLICAS + 1)]
        assert {p["actor"] for p in pair} == {actor}
        assert len({p["pid"] for p in pair}) == REPLICAS and all(alive(p["pid"]) for p in pair), pair
        assert len({p["metrics_url"] for p in pair}) == REPLICAS

    before = handled_by_process(replica_mesh)
    since = time.time()
    outcomes = asyncio.run(run_load(replica_mesh.gateway_url, build_messages(replica_mesh.mocks_url, 60),
                                    concurrency=10))
    # Answered, terminal, two history rows each, no effect twice, no step over its delivery limit.
    figures = check_invariants(replica_mesh.endpoints, outcomes, since=since, max_deliveries=MAX_DELIVERIES,
                               max_republishes=MAX_REPUBLISHES)
    ids = {o.message_id for o in outcomes}
    sagas = {mid: events for mid, events in asyncio.run(sagas_since(replica_mesh.endpoints, since)).items()
             if mid in ids}

    # Each step delivered once, plus once per retry the step itself scheduled: nothing was delivered twice.
    for mid, events in sagas.items():
        again = Counter(e.step_index for e in events if e.kind == "redelivered" and e.data.get("source") == "retry")
        retries = Counter(e.step_index for e in events if e.kind == "retry_scheduled")
        assert again == retries, (mid, again, retries)
        # (`wake`: the resume of a wait, claimed once by its first delivery, is no redelivery.)
        assert not [e for e in events if e.kind == "redelivered" and e.data.get("source") not in ("retry", "wake")], mid
    completed = Counter(e.actor for events in sagas.values() for e in events if e.kind == "step_completed")

    # The handlers ran exactly as often as the log has completed steps, summed over both replicas of each
    # actor (a step run by both would count twice; one answered from the log would count as memoized).
    def delta() -> dict[str, Counter[str]]:
        after = handled_by_process(replica_mesh)
        return {name: after[name] - before.get(name, Counter()) for name in after}

    def summed(d: dict[str, Counter[str]]) -> Counter[str]:
        return Counter({a: sum(d[f"{a}-{i}"]["completed"] for i in range(1, REPLICAS + 1)) for a in ACTORS})

    # A step's count is taken after its ack, which may come a moment after the client saw the answer.
    deadline = time.monotonic() + 30
    work = delta()
    while summed(work) != completed and time.monotonic() < deadline:
        time.sleep(0.2)
        work = delta()
    assert summed(work) == completed, f"handler runs {summed(work)} != completed steps in the log {completed}"
    assert sum(c["memoized"] for c in work.values()) == 0, work
    shared = [a for a in ACTORS if all(work[f"{a}-{i}"]["completed"] for i in range(1, REPLICAS + 1))]
    print(f"\n{figures}\nsteps per replica: "
          f"{ {n: c['completed'] for n, c in sorted(work.items())} }\nactors whose replicas both worked: {shared}")
    assert shared, f"no actor had both replicas working: {work}"
    # The load really spread: most actors that did work did it on both replicas.
    busy = [a for a in ACTORS if completed[a] >= 10]
    assert len(set(shared) & set(busy)) >= len(busy) // 2, (shared, busy)


# ---- 2. the event stream of a saga that never started -------------------------------------------------


async def record_state_without_start(endpoints: dict, message_id: str) -> None:
    """What the gateway leaves behind when it wrote `saga_state` and then failed to record `saga_started`
    (it answered 503): a state that nothing will ever move."""
    nc = await nats.connect(**nats_options(endpoints))
    try:
        saga = await SagaLog.open(nc.jetstream(timeout=10))
        await saga.set_state(message_id, status="running", step_index=0, actor="gateway", session_id="s-never",
                             owner=customer_owner("user@example.com"))  # the customer AUTH signs in as
    finally:
        await nc.close()


@pytest.mark.timeout(MESH_START_S + 120)
def test_event_stream_of_a_saga_that_never_started_ends_when_it_is_failed(replica_mesh: Mesh) -> None:
    message_id = new_message_id()
    asyncio.run(record_state_without_start(replica_mesh.endpoints, message_id))
    opened = time.monotonic()

    # Open before the sweeper acts (stall time, then a sweep): the stream must end on the failure it records,
    # not at its idle timeout.
    events = read_events(replica_mesh.gateway_url, message_id, within_s=STALL_AFTER_S + 45)
    took = time.monotonic() - opened

    assert [(kind, e["kind"], e["data"].get("reason")) for kind, e, _ in events] == \
        [("saga", "saga_failed", "not_started")], events
    assert events[0][1]["actor"] == "escalation_router"  # the sweeper runs in the error handler's processes
    assert took < STREAM_IDLE_TIMEOUT_S / 2
    saga = httpx.get(f"{replica_mesh.gateway_url}/api/sagas/{message_id}", timeout=10, headers=AUTH).json()
    assert saga["state"]["status"] == "failed" and len(saga["events"]) == 1  # both sweepers: one record
    # Asked again once it is failed: the same single event, and the stream ends at once.
    again_at = time.monotonic()
    again = read_events(replica_mesh.gateway_url, message_id, within_s=15)
    assert [e["kind"] for _, e, _ in again] == ["saga_failed"] and time.monotonic() - again_at < 15


# ---- 3, 4. chaos against the running mesh ---------------------------------------------------------------

KILL = re.compile(r"^\[chaos \+\s*[\d.]+s @[\d.]+\] (?P<dry>\(dry run\) )?(?P<victim>\S+): SIGKILL pid (?P<pid>\d+)$",
                  re.M)


def chaos(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    """`supportmesh chaos` against the mesh, as a user runs it from another shell."""
    return subprocess.run([sys.executable, "-m", "supportmesh.cli", "chaos", "--data-dir", str(mesh.data_dir),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(MESH_START_S + 60)
def test_chaos_dry_run_kills_nothing_and_says_what_it_would_kill(replica_mesh: Mesh) -> None:
    pids = replica_mesh.pids()
    restarts = {n: p["restarts"] for n, p in replica_mesh.endpoints["processes"].items()}

    out = chaos(replica_mesh, "--dry-run", "--include-nats", "--interval", "0.2", "--duration", "2", "--seed", "11")

    assert out.returncode == 0, out.stderr
    kills = [(m["dry"], m["victim"], int(m["pid"])) for m in KILL.finditer(out.stdout)]
    assert len(kills) >= 5, out.stdout
    # Each line names a real victim by its real PID, marked as a dry run.
    assert all(dry and pids[victim] == pid for dry, victim, pid in kills), (kills, pids)
    # Nothing died: every process is alive under the same PID, nothing was restarted.
    assert [n for n, pid in pids.items() if not alive(pid)] == []
    assert replica_mesh.pids() == pids
    assert {n: p["restarts"] for n, p in replica_mesh.endpoints["processes"].items()} == restarts
    summary = out.stdout.strip().splitlines()[-1]
    assert "dry run" in summary and "nothing was killed" in summary, summary


def seed_killing_first(victims: list[str], wanted: str) -> int:
    """A seed for which `supportmesh chaos` picks `wanted` in its first round (it draws from the sorted names)."""
    return next(s for s in range(10_000) if random.Random(s).choice(sorted(victims)) == wanted)


@pytest.mark.timeout(MESH_START_S + 150)
def test_chaos_include_nats_kills_nats_server_which_is_restarted(replica_mesh: Mesh) -> None:
    ep = replica_mesh.endpoints
    victims = [n for n, p in ep["processes"].items() if p["kind"] == "actor" and p["pid"]] + ["nats-server"]
    old_pid = ep["nats_pid"]
    assert alive(old_pid)

    # One round (the interval outlasts the run), with a seed whose first pick is nats-server.
    out = chaos(replica_mesh, "--include-nats", "--interval", "30", "--duration", "1",
                "--seed", str(seed_killing_first(victims, "nats-server")))

    assert out.returncode == 0, out.stderr
    assert [(m["victim"], int(m["pid"])) for m in KILL.finditer(out.stdout)] == [("nats-server", old_pid)], out.stdout
    assert not alive(old_pid)
    # The runner restarts it (same port, same store) and says so.
    new_pid = wait_for(lambda: (pid := replica_mesh.endpoints["nats_pid"]) != old_pid and alive(pid) and pid,
                       60, "nats-server restarted")
    assert replica_mesh.endpoints["nats_url"] == ep["nats_url"]
    assert "nats-server exited" in (replica_mesh.data_dir / "up.log").read_text()
    # The mesh answers again: a chat (sent again on 503 while the gateway reconnects) and its saga completes.
    [outcome] = asyncio.run(run_load(replica_mesh.gateway_url, [("user@example.com", "Where is my order 12345?")],
                                     concurrency=1))
    assert outcome.status == "resolved", outcome
    saga = httpx.get(f"{replica_mesh.gateway_url}/api/sagas/{outcome.message_id}", timeout=10, headers=AUTH).json()
    assert saga["state"]["status"] == "completed"
    assert replica_mesh.endpoints["nats_pid"] == new_pid  # no second restart


# ---- 5. Ctrl-C: last, it stops the mesh ----------------------------------------------------------------


@pytest.mark.timeout(MESH_START_S + 150)
def test_ctrl_c_stops_every_process_and_exits_cleanly(replica_mesh: Mesh) -> None:
    assert replica_mesh.proc is not None and replica_mesh.proc.poll() is None, "the mesh is already stopped"
    ep = replica_mesh.endpoints
    assert ep["supervisor_pid"] == replica_mesh.proc.pid
    pids = replica_mesh.pids()
    assert len(pids) == REPLICAS * len(ACTORS) + 2 + 2  # actors, the gateway and the mocks, nats and redis
    assert {"nats-server", "redis-server", "gateway-1", "mocks"} <= set(pids)
    assert [n for n, pid in pids.items() if not alive(pid)] == []

    replica_mesh.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (children run in their own sessions)
    code = replica_mesh.proc.wait(timeout=120)

    log = (replica_mesh.data_dir / "up.log").read_text()
    assert code == 0, log[-3000:]
    still_running = {n: pid for n, pid in pids.items() if alive(pid)}
    assert still_running == {}, f"left running after Ctrl-C: {still_running}"
    assert "supportmesh stopped." in log and "Traceback" not in log
    # In order (README: "Ctrl-C stops everything in order"): the gateway, the actors, the mocks, then Redis
    # and NATS, whose clients are all gone by then.
    stopped = re.findall(r" INFO stopped (\S+)$", log, re.M)
    assert sorted(stopped) == sorted(pids), stopped
    rank = {"gateway": 0, "mocks": 2, "redis-server": 3, "nats-server": 4}
    ranks = [rank.get(name.split("-")[0] if name.startswith("gateway") else name, 1) for name in stopped]
    assert ranks == sorted(ranks), stopped
    assert replica_mesh.endpoints["ready"] is False
