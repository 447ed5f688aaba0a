"""Observability: one trace per customer message across every process (exported over OTLP to a receiver the
test runs), no customer text in spans, Grafana dashboards whose every panel query parses and returns data from
a real Prometheus scraping the running mesh."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml

from mesh_fixture import Mesh
from observability import metrics
from observability.prometheus import render_scrape_config
from otlp_receiver import OTLPReceiver

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
METRIC = re.compile(r"\b(supportmesh_[a-z0-9_]+)")


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana variables substituted) for every panel target."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                out.append((board["title"], panel["title"], expr))
    return out


def known_metric_names() -> set[str]:
    names = set()
    for obj in vars(metrics).values():
        name = getattr(obj, "_name", None)
        kind = getattr(obj, "_type", None)
        if isinstance(name, str) and name.startswith("supportmesh_"):
            base = name
            names.add(base if kind != "counter" else f"{base}_total")
            if kind == "histogram":
                names.update({f"{base}_bucket", f"{base}_count", f"{base}_sum"})
    return names


# ---- offline checks ----------------------------------------------------------------------------------

def test_dashboards_are_valid_and_use_only_real_metrics() -> None:
    assert {p.stem for p in DASHBOARDS} == {"support-latency", "saga-health", "throughput-backlog"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    known = known_metric_names()
    queries = panel_queries()
    assert len(queries) >= 15
    for board, title, expr in queries:
        promql_parser.parse(expr)  # raises on invalid PromQL
        for name in METRIC.findall(expr):
            assert name in known, f"{board} / {title}: unknown metric {name}"
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "jaeger_url"}
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    latency = json.loads((GRAFANA / "dashboards" / "support-latency.json").read_text())
    assert any(link["url"].startswith("${jaeger_url}") for p in latency["panels"]
               for link in p["fieldConfig"]["defaults"]["links"])


def test_provisioning_references_every_dashboard() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yaml").read_text())["datasources"]
    assert {s["type"] for s in sources} == {"prometheus", "jaeger"}
    # The folder provider loads every JSON of grafana/dashboards/ (k8s mounts exactly that folder there).
    assert DASHBOARDS and all(p.parent.name == "dashboards" for p in DASHBOARDS)


def test_generated_scrape_config_passes_promtool(tmp_path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(render_scrape_config({"gateway": ["127.0.0.1:8000"], "intent_analyzer": ["127.0.0.1:9101"]}))
    out = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- against a running mesh ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory):
    with OTLPReceiver() as receiver:
        mesh = Mesh(tmp_path_factory.mktemp("obs-mesh"), observability=True, env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "SUPPORTMESH_SCRAPE_INTERVAL": "1s"}).start()
        try:
            yield mesh, receiver
        finally:
            mesh.stop()


CHATS = ["My order 12345 is late!", "I want a refund for order 44444", "This is fraud, I will call my lawyer",
         "Where is 1Z999AA10123456784?", "asdf qwer"]


@pytest.fixture(scope="module")
def chats(traced_mesh):
    mesh, _ = traced_mesh
    out = []
    for text in CHATS:
        r = httpx.post(f"{mesh.gateway_url}/api/chat", timeout=30, json={
            "session_id": uuid.uuid4().hex, "customer_email": "user@example.com", "message": text})
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


@pytest.mark.e2e
def test_one_trace_per_message_across_every_process(traced_mesh, chats) -> None:
    mesh, receiver = traced_mesh
    for chat in chats:
        saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{chat['message_id']}").json()
        route = [e["actor"] for e in saga["events"] if e["kind"] == "step_completed"]
        expected = {"supportmesh-gateway"} | {f"supportmesh-{a.replace('_', '-')}" for a in route}

        def complete(r: OTLPReceiver, tid=chat["trace_id"], want=expected) -> bool:  # type: ignore[no-untyped-def]
            # Processes export in batches: wait for every service and for the tree to be whole.
            spans = r.traces().get(tid, [])
            ids = {s.span_id for s in spans}
            return (want <= {s.service for s in spans} and any(not s.parent_id for s in spans)
                    and all(not s.parent_id or s.parent_id in ids for s in spans)
                    and any(s.kind == "PRODUCER" and s.service == "supportmesh-gateway" for s in spans))

        assert receiver.wait_for(complete, timeout=20), (chat["message"] if "message" in chat else chat, expected)
        spans = receiver.traces()[chat["trace_id"]]
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_id]
        assert len(roots) == 1 and roots[0].service == "supportmesh-gateway" and roots[0].kind == "SERVER"
        orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
        assert not orphans, [(s.service, s.name) for s in orphans]  # one tree under the root
        consumers = [s for s in spans if s.kind == "CONSUMER"]
        assert {s.service for s in consumers} == expected - {"supportmesh-gateway"}
        for s in consumers:
            assert s.attributes["messaging.system"] == "nats"
            assert s.attributes["messaging.destination.name"].startswith("ecommerce.support.")
            assert s.attributes["messaging.operation.type"] == "process"
            assert s.attributes["messaging.message.conversation_id"] == chat["message_id"]
            hop = f"{chat['message_id']}:{s.attributes['supportmesh.step_index']}"
            assert s.attributes["messaging.message.id"] == hop
            assert s.name == f"process {s.attributes['messaging.destination.name']}"
            assert s.attributes["messaging.consumer.group.name"]
        assert any(s.kind == "PRODUCER" and s.service == "supportmesh-gateway" for s in spans)
        if "context_retriever" in route:
            assert any(s.service == "supportmesh-mocks" and s.kind == "SERVER" for s in spans)
            assert any(s.service == "supportmesh-context-retriever" and s.kind == "CLIENT" for s in spans)
        if "response_generator" in route:
            llm = [s for s in spans if s.name.startswith("chat ") and s.kind == "CLIENT"]
            assert llm and llm[0].attributes["gen_ai.request.model"] and "gen_ai.usage.input_tokens" in llm[0].attributes


@pytest.mark.e2e
def test_no_customer_text_in_spans(traced_mesh, chats) -> None:
    _, receiver = traced_mesh
    texts = [t.lower() for t in CHATS]
    for span in receiver.spans:
        for value in span.attributes.values():
            if isinstance(value, str):
                assert not any(t in value.lower() for t in texts), (span.service, span.name, value[:100])


@pytest.mark.e2e
def test_every_dashboard_panel_returns_data(traced_mesh, chats) -> None:
    mesh, _ = traced_mesh
    prom = mesh.endpoints["prometheus_url"]
    queries = panel_queries()
    missing: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        missing = []
        for board, title, expr in queries:
            r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
            if r.get("status") != "success" or not r["data"]["result"]:
                missing.append((board, title, expr))
        if not missing:
            break
        time.sleep(2)
    assert not missing, missing
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert len(targets) >= 11 and all(t["health"] == "up" for t in targets), [
        (t["labels"].get("job"), t["health"], t.get("lastError")) for t in targets if t["health"] != "up"]
