"""Node loss on a three-node JetStream cluster (`supportmesh up --nats-cluster 3`, streams and buckets R3).

Under a load of signed-in chats, the node leading the work stream is killed -9, then (once it is back) a follower:
every accepted message is answered, no side effect happens twice, two history rows per message, no step over
its delivery limit (the chaos suite's invariants, tests/support/chaos_load.py). The supervisor restarts a killed
node on its store at once, as a StatefulSet would. The figures (kill to a new stream leader, the answers' p99
during the failover) are printed and kept in test-artifacts/nats-cluster-figures.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from supportmesh.credentials import nats_options

from tests.support import REPO
from tests.support.chaos_load import (
    CHAOS_ENV,
    MAX_DELIVERIES,
    MAX_REDELIVERIES,
    MAX_SWEEPS,
    Outcome,
    build_messages,
    check_invariants,
    run_load,
)
from tests.support.mesh import Mesh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FIGURES = REPO / "test-artifacts" / "nats-cluster-figures.json"
CHATS_PER_KILL = 30
STREAM = "SUPPORT"


@pytest.fixture(scope="module")
def cluster_mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("nats-cluster"), nats_cluster=3, env=CHAOS_ENV).start()
    try:
        yield m
    finally:
        m.stop()


def nodes(mesh: Mesh) -> dict[str, dict[str, Any]]:
    """The cluster's nodes by name (n1, n2, n3), from endpoints.json (PIDs change when one is restarted)."""
    return {node["name"]: node for node in mesh.endpoints["nats_nodes"]}


async def stream_cluster(url: str, endpoints: dict[str, Any], timeout_s: float = 0.5) -> dict[str, Any] | None:
    """The work stream's `cluster` (leader, replicas) as one node answers $JS.API.STREAM.INFO, or None when no
    answer came in `timeout_s` (no leader to answer)."""
    nc = await nats.connect(**{**nats_options(endpoints), "servers": [url]}, allow_reconnect=False,
                            connect_timeout=2)
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=timeout_s)
        return json.loads(msg.data).get("cluster")
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    finally:
        await nc.close()


async def wait_for(condition, what: str, timeout_s: float):  # type: ignore[no-untyped-def]
    """Poll the async `condition` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def all_healthy(mesh: Mesh) -> bool:
    async with httpx.AsyncClient(timeout=1) as client:
        for node in nodes(mesh).values():
            try:
                if (await client.get(f"{node['monitor_url']}/healthz")).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
    return True


async def kill_during_load(mesh: Mesh, messages: list[tuple[str, str]], role: str) -> tuple[dict, list[Outcome]]:
    """Start the load, wait until the work stream is busy, kill -9 the stream's leader (`role` "leader") or one of
    its followers ("follower"), and measure: kill to a stream leader again, kill to the node back and current."""
    endpoints = mesh.endpoints
    await wait_for(lambda: all_healthy(mesh), "every node healthy before the kill", 120)
    before = await wait_for(lambda: stream_cluster(endpoints["nats_urls"][0], endpoints, 2), "a stream leader", 60)
    start_seq = await last_seq(endpoints)
    load = asyncio.create_task(run_load(mesh.gateway_url, messages, concurrency=6))
    # The kill lands while hops are being published, acked and fetched: once the load has put 15 hops through.
    await wait_for(lambda: busy(endpoints, start_seq + 15), "the load reaching the work stream", 60)
    info = await wait_for(lambda: stream_cluster(endpoints["nats_urls"][0], endpoints, 2), "a stream leader", 30)
    leader = info["leader"]
    victim = leader if role == "leader" else next(r["name"] for r in info.get("replicas", []))
    survivor = next(node["url"] for name, node in nodes(mesh).items() if name != victim)
    old_pid = nodes(mesh)[victim]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), time.time()

    seen: list[Any] = []

    async def has_leader() -> dict | None:
        # Any leader the stream answers with (only a leader answers): a survivor, or the victim once restarted
        # (the supervisor brings it back at once, and it may win the election).
        cluster = await stream_cluster(survivor, endpoints)
        seen.append((round(time.monotonic() - killed_at, 2), cluster and cluster.get("leader")))
        leader = cluster.get("leader") if cluster else None
        return cluster if leader and (leader != victim or nodes(mesh)[victim]["pid"] != old_pid) else None

    after = await wait_for(has_leader, f"the work stream with a leader again (killed {victim}: {seen[-20:]})", 60)
    leader_after_s = time.monotonic() - killed_at

    async def back() -> bool:
        node = nodes(mesh)[victim]
        return node["pid"] != old_pid and await all_healthy(mesh)

    await wait_for(back, f"{victim} restarted and current", 120)
    back_after_s = time.monotonic() - killed_at
    outcomes = await load
    figures = {"killed": f"{victim} ({role}; leader before: {before['leader']})", "leader_after": after["leader"],
               "kill_to_leader_s": round(leader_after_s, 2), "kill_to_node_back_healthy_s": round(back_after_s, 2),
               "killed_at": killed_wall, "_killed_at_monotonic": killed_at,
               "_leader_at_monotonic": killed_at + leader_after_s}
    return figures, outcomes


async def last_seq(endpoints: dict[str, Any]) -> int:
    nc = await nats.connect(**nats_options(endpoints))
    try:
        return (await nc.jetstream(timeout=5).stream_info(STREAM)).state.last_seq
    finally:
        await nc.close()


async def busy(endpoints: dict[str, Any], seq: int) -> bool:
    return await last_seq(endpoints) >= seq


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)


def during(outcomes: list[Outcome], figures: dict) -> list[float]:
    """The answer times of the chats in flight at some point between the kill and the new leader."""
    start, end = figures["_killed_at_monotonic"], figures["_leader_at_monotonic"]
    return [o.seconds for o in outcomes if o.started_at <= end and o.started_at + o.seconds >= start]


def report(figures: dict) -> None:
    print(f"\nnats cluster node loss: {json.dumps(figures)}")
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps({**figures, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))


def permission_violations(mesh: Mesh) -> list[str]:
    logs = Path(mesh.endpoints["logs_dir"]).glob("nats-server-n*.log")
    return [line for path in logs for line in path.read_text(errors="replace").splitlines()
            if "permissions violation" in line.lower()]


@pytest.mark.timeout(420, func_only=True)
def test_stream_leader_then_follower_killed_under_load(cluster_mesh: Mesh) -> None:
    mesh = cluster_mesh
    assert len(nodes(mesh)) == 3 and len(mesh.endpoints["nats_urls"]) == 3
    messages = build_messages(mesh.mocks_url, 2 * CHATS_PER_KILL)
    # Commerce calls of real latency keep steps in flight across the kills.
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json={"default": {"latency_ms": 100, "latency_jitter_ms": 100}},
              timeout=10).raise_for_status()
    since = time.time()
    try:
        leader_kill, first = asyncio.run(kill_during_load(mesh, messages[:CHATS_PER_KILL], "leader"))
        follower_kill, second = asyncio.run(kill_during_load(mesh, messages[CHATS_PER_KILL:], "follower"))
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10)
    outcomes = first + second
    figures = check_invariants(mesh.endpoints, outcomes, since=since, max_deliveries=MAX_DELIVERIES,
                               max_republishes=MAX_REDELIVERIES + MAX_SWEEPS)
    figures["leader_kill"] = {k: v for k, v in leader_kill.items() if not k.startswith("_")}
    figures["leader_kill"]["answer_p99_during_failover_s"] = p99(during(first, leader_kill))
    figures["leader_kill"]["chats_in_flight_during_failover"] = len(during(first, leader_kill))
    figures["follower_kill"] = {k: v for k, v in follower_kill.items() if not k.startswith("_")}
    figures["follower_kill"]["answer_p99_during_failover_s"] = p99(during(second, follower_kill))
    figures["answer_p99_s"] = p99([o.seconds for o in outcomes])
    report(figures)
    assert figures["leader_kill"]["chats_in_flight_during_failover"] > 0, "no chat was in flight during the failover"
    assert not permission_violations(mesh), permission_violations(mesh)[:5]


def test_every_stream_and_bucket_has_three_replicas(cluster_mesh: Mesh) -> None:
    async def replicas() -> dict[str, int]:
        nc = await nats.connect(**nats_options(cluster_mesh.endpoints))
        try:
            js = nc.jetstream(timeout=10)
            return {s.config.name: s.config.num_replicas for s in await js.streams_info()}
        finally:
            await nc.close()

    found = asyncio.run(replicas())
    assert {STREAM, f"{STREAM}_DEADLETTERS", "KV_saga_log", "KV_saga_state", "KV_saga_running",
            "KV_chat_results", "KV_saga_recovery"} <= set(found), found
    assert set(found.values()) == {3}, found
