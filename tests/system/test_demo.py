"""`supportmesh demo` (README: "prints the saga log of toy messages, one of them retried"): run as a user
would, in a temporary folder of the test's (TMPDIR), and check that what it prints is true, that it exits 0
and that the nats-server it started is gone afterwards, its folder removed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.proc_check import processes_mentioning

HEADER = re.compile(r"^message (?P<id>[0-9a-f]{32}): '(?P<text>[^']*)' -> (?P<status>\w+)$")
EVENT = re.compile(r"^  \+\s*(?P<ms>[\d.]+) ms  step (?P<step>\d+)  (?P<actor>\S+)\s+(?P<kind>\w+)\s+"
                   r"attempt (?P<attempt>\d+)  ?(?P<extra>.*)$")
BACKOFF_BASE_S = 0.3  # what the demo configures


def sagas(output: str) -> list[dict]:
    """The printed sagas: id, text, status and their events (offset, step, actor, kind, attempt, extra)."""
    out: list[dict] = []
    for line in output.splitlines():
        if m := HEADER.match(line):
            out.append({**m.groupdict(), "events": []})
        elif m := EVENT.match(line):
            out[-1]["events"].append({**m.groupdict(), "ms": float(m["ms"]), "step": int(m["step"]),
                                      "attempt": int(m["attempt"])})
    return out


@pytest.mark.timeout(120)
def test_demo_prints_true_saga_logs_and_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "supportmesh.cli", "demo"], cwd=REPO,
                            env={**os.environ, "TMPDIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # While it runs, its nats-server is visible (its configuration lives in the demo's temporary folder).
    servers: dict[int, str] = {}
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        servers.update({pid: cmd for pid, cmd in processes_mentioning(str(tmp_path)).items() if "nats-server" in cmd})
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 0, err
    assert servers, "never saw the demo's nats-server"
    assert processes_mentioning(str(tmp_path)) == {}, "the demo left processes running"
    assert list(tmp_path.iterdir()) == [], "the demo left its temporary folder behind"

    plain, flaky = sagas(out)
    assert plain["id"] != flaky["id"]
    route = ["demo_shout", "demo_flaky", "demo_count"]
    for saga in (plain, flaky):
        events = saga["events"]
        assert saga["status"] == "completed"
        assert (events[0]["kind"], events[0]["actor"]) == ("saga_started", "gateway")
        assert events[-1]["kind"] == "saga_completed"
        assert [e["actor"] for e in events if e["kind"] == "step_completed"] == route
        assert [e["ms"] for e in events] == sorted(e["ms"] for e in events)  # in the order they happened
        shout, _, count = (e["extra"] for e in events if e["kind"] == "step_completed")
        assert f"'shout': '{saga['text'].upper()}'" in shout  # each enrichment is what the actor computed
        assert f"'words': {len(saga['text'].split())}" in count

    # The plain message: each step once, first attempt, no retry.
    assert all(e["attempt"] == 1 for e in plain["events"])
    assert [e["kind"] for e in plain["events"]].count("step_completed") == 3
    assert not {"retry_scheduled", "redelivered"} & {e["kind"] for e in plain["events"]}
    # The flaky one: its second step failed once, was retried after the backoff printed, and succeeded.
    step1 = [(e["kind"], e["attempt"]) for e in flaky["events"] if e["actor"] == "demo_flaky"]
    assert step1 == [("retry_scheduled", 1), ("redelivered", 2), ("step_completed", 2)], step1
    retry = next(e for e in flaky["events"] if e["kind"] == "retry_scheduled")
    again = next(e for e in flaky["events"] if e["kind"] == "redelivered" and e["attempt"] == 2)
    delay_s = float(retry["extra"])
    assert delay_s >= BACKOFF_BASE_S
    assert again["ms"] - retry["ms"] >= delay_s * 1000 * 0.9  # the retry really waited (timestamps to 0.1 ms)
    assert "'attempt': 2" in next(e["extra"] for e in flaky["events"]
                                  if e["kind"] == "step_completed" and e["actor"] == "demo_flaky")
