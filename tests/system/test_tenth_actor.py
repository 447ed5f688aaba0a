"""A tenth actor, from one file (tests/support/toy_tenth_actor.py) and one registry line
(tests/support/toy_registry.py), runs in a real mesh with no change to the runtime: `supportmesh up` starts it, the
chat route goes through it, and its metrics exist."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.support.chat_client import answer
from tests.support.mesh import Mesh

HAPPY = ["sentiment_analyzer", "intent_analyzer", "context_retriever", "decision_router", "response_generator",
         "guardrail_validator"]


def metric(url: str, name: str, actor: str, extra: str = "") -> float | None:
    """The value of a series `name{actor="<actor>"<extra>}` on a /metrics page (None when it is absent)."""
    text = httpx.get(url, timeout=5).text
    m = re.search(rf'^{name}{{actor="{actor}"{extra}}} (\S+)$', text, flags=re.MULTILINE)
    return float(m.group(1)) if m else None


@pytest.mark.e2e
@pytest.mark.integration
def test_a_tenth_actor_from_one_file_and_one_registry_line_runs_in_a_real_mesh(tmp_path) -> None:
    mesh = Mesh(tmp_path / "mesh", env={"SUPPORTMESH_ACTOR_REGISTRY": "tests.support.toy_registry:ACTORS",
                                        "SUPPORTMESH_CHAT_DEADLINE_S": "3"}).start()
    try:
        processes = mesh.endpoints["processes"]
        assert processes["length_tagger-1"]["kind"] == "actor"  # `supportmesh up` started it

        body = answer(mesh.gateway_url, "My order 12345 is late!")
        assert body["status"] == "resolved"
        saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{body['message_id']}", headers=mesh.auth(), timeout=10)
        steps = [e["actor"] for e in saga.json()["events"] if e["kind"] == "step_completed"]
        assert steps == [*HAPPY, "length_tagger", "response_aggregator"]  # the gateway's route includes it

        # Its own metrics, and recovery's zero-filled series for it in the escalation router.
        own = processes["length_tagger-1"]["metrics_url"]
        deadline = time.monotonic() + 30
        while metric(own, "supportmesh_actor_messages_total", "length_tagger", ',outcome="completed"') != 1.0:
            assert time.monotonic() < deadline, httpx.get(own, timeout=5).text
            time.sleep(0.2)
        assert metric(processes["escalation_router-1"]["metrics_url"], "supportmesh_dead_letters_total",
                      "length_tagger") == 0.0
    finally:
        mesh.stop()
