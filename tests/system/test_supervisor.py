"""The local runner's supervision: crashed processes restarted with growing backoff and logged, one log file
per process under logs/, a crash during start-up healed before the mesh is ready, and SIGTERM stopping every
process in order with no PID left behind."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from supportmesh.supervisor import Child, Supervisor
from supportmesh.up import ACTORS

from tests.support.mesh import Mesh


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def python_child(name: str, kind: str, code: str, tmp: Path) -> Child:
    return Child(name=name, kind=kind, argv=[sys.executable, "-c", code], env=dict(os.environ),
                 log_path=tmp / "logs" / f"{name}.log")


async def wait_until(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def supervise_until_restarted(sup: Supervisor, child: Child, restarts: int) -> None:
    """Run the supervisor until `child` was restarted `restarts` times, then stop it."""
    task = asyncio.create_task(sup.run(poll_s=0.02))
    try:
        await wait_until(lambda: child.restarts >= restarts)
    finally:
        await sup.stop([child.kind])
        task.cancel()


async def test_a_crashing_process_is_restarted_with_growing_backoff_and_logged(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="supportmesh.supervisor")
    sup = Supervisor(base_backoff_s=0.1, max_backoff_s=0.8, healthy_after_s=60)
    child = sup.add(python_child("crasher", "actor", "print('boom', flush=True); raise SystemExit(3)", tmp_path))
    await supervise_until_restarted(sup, child, 5)

    exits = [h for h in child.history if h["event"] == "exited"]
    restarts = [h for h in child.history if h["event"] == "restarted"]
    assert [h["code"] for h in exits[:5]] == [3] * 5
    assert [h["restart_in_s"] for h in exits[:5]] == [0.1, 0.2, 0.4, 0.8, 0.8]  # doubling, capped
    for exited, restarted in zip(exits, restarts):
        assert restarted["at"] - exited["at"] >= exited["restart_in_s"]  # it really waited
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("crasher exited with 3" in w and "restarting in" in w for w in warnings) >= 5
    own_log = child.log_path.read_text()
    assert own_log.count("boom") >= 5  # every run appends to the same file
    assert own_log.count("supportmesh supervisor") >= 5 and "exited with 3" in own_log


async def test_backoff_resets_after_a_healthy_run(tmp_path) -> None:
    sup = Supervisor(base_backoff_s=0.1, max_backoff_s=5, healthy_after_s=0.3)
    child = sup.add(python_child("flaky", "actor", "import time; time.sleep(0.5)", tmp_path))
    await supervise_until_restarted(sup, child, 3)
    assert {h["restart_in_s"] for h in child.history if h["event"] == "exited"} == {0.1}


async def test_stop_signals_kind_by_kind_and_waits_for_each(tmp_path) -> None:
    trail = tmp_path / "trail.log"
    # Each child notes SIGTERM and takes a while to exit: a kind must be gone before the next is signalled.
    code = f"""
import signal, sys, time
def bye(*_):
    open({str(trail)!r}, "a").write("term " + sys.argv[1] + "\\n"); time.sleep(0.3)
    open({str(trail)!r}, "a").write("exit " + sys.argv[1] + "\\n"); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
open({str(trail)!r}, "a").write("ready " + sys.argv[1] + "\\n")
while True: time.sleep(1)
"""
    sup = Supervisor()
    children = [("mocks", "mocks"), ("actor-a", "actor"), ("gateway-1", "gateway"), ("actor-b", "actor")]
    for name, kind in children:
        child = python_child(name, kind, code, tmp_path)
        child.argv.append(name)
        sup.add(child)
    await wait_until(lambda: trail.exists() and trail.read_text().count("ready") == len(children))
    pids = [c.pid for c in sup.children.values()]

    await sup.stop(["gateway", "actor", "mocks"])

    lines = [line for line in trail.read_text().splitlines() if not line.startswith("ready")]
    kind_of = dict(children)
    order = [kind_of[line.split()[1]] for line in lines]
    assert order == sorted(order, key=["gateway", "actor", "mocks"].index), lines
    assert lines.index("exit gateway-1") < min(lines.index("term actor-a"), lines.index("term actor-b"))
    assert max(lines.index("exit actor-a"), lines.index("exit actor-b")) < lines.index("term mocks")
    assert sup.stopped[0] == "gateway-1" and sup.stopped[-1] == "mocks"
    assert not [pid for pid in pids if pid and alive(pid)]


@pytest.mark.e2e
def test_up_heals_a_crash_during_start_logs_every_process_and_stops_on_sigterm(tmp_path) -> None:
    mesh = Mesh(tmp_path / "mesh").launch()
    try:
        # Kill an actor while the mesh is still starting: supervision must already be running.
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            try:
                ep = mesh.endpoints
                victim = ep["processes"]["intent_analyzer-1"]["pid"]
            except (FileNotFoundError, ValueError, KeyError):
                time.sleep(0.05)
        assert victim and not ep["ready"], "the mesh was ready before the test could crash a process"
        os.kill(victim, signal.SIGKILL)
        mesh.wait_ready(120)
        ep = mesh.endpoints
        assert ep["processes"]["intent_analyzer-1"]["restarts"] >= 1
        assert ep["processes"]["intent_analyzer-1"]["pid"] != victim

        # One log file per process under logs/ (Redis included), each with something in it.
        logs = Path(ep["logs_dir"])
        expected = {f"{name}.log" for name in ep["processes"]} | {"nats-server.log", "redis-server.log"}
        assert expected <= {p.name for p in logs.iterdir()}
        assert all((logs / name).stat().st_size > 0 for name in expected), \
            {name: (logs / name).stat().st_size for name in expected}
        assert {f"{a}-1" for a in ACTORS} <= set(ep["processes"])
        assert not (Path(ep["data_dir"]) / "redis" / "redis.log").exists()
        assert "exited with -9" in (logs / "intent_analyzer-1.log").read_text()

        pids = mesh.pids()
        assert {"gateway-1", "mocks", "nats-server", "redis-server"} <= set(pids)
        mesh.proc.send_signal(signal.SIGTERM)
        assert mesh.proc.wait(timeout=60) == 0
    finally:
        mesh.stop()

    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"still running after SIGTERM: {left}"
    stopped = re.findall(r"stopped (\S+)$", (mesh.data_dir / "up.log").read_text(), flags=re.MULTILINE)
    rank = {"gateway": 0, "mocks": 2, "redis-server": 3, "nats-server": 4}
    ranks = [rank.get(name.rsplit("-", 1)[0] if name.startswith("gateway") else name, 1) for name in stopped]
    assert ranks == sorted(ranks), stopped
    assert set(stopped) == set(pids), set(pids) ^ set(stopped)
