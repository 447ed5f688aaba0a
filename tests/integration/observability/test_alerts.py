"""The Prometheus alert rules (grafana/alerts/supportmesh.rules.yml): valid for promtool, firing on the
situations they name (promtool's rule unit tests), and built only on metrics that real supportmesh processes
export (the error handler's storage gauges, the gateway's responses by status class, backlog, dead letters)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import httpx
import promql_parser
import yaml

from observability.prometheus import ALERT_RULES

from tests.system.test_observability import METRIC, known_metric_names


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def rule_metrics() -> set[str]:
    return {name for rule in rules() for name in METRIC.findall(rule["expr"])}


def test_alert_rules_pass_promtool() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {rule["alert"] for rule in rules()}
    assert {"SupportmeshJetStreamStorageHigh", "SupportmeshConsumerBacklogGrowing", "SupportmeshDeadLetters",
            "SupportmeshGatewayErrors"} <= alerts
    for rule in rules():
        promql_parser.parse(rule["expr"])
        for name in METRIC.findall(rule["expr"]):
            assert name in known_metric_names(), f"{rule['alert']}: unknown metric {name}"


def fired(alert: str, summary: str, **labels: str) -> dict:
    """An expected alert: its labels, its summary as rendered, its description as written in the rule file."""
    annotations = {"summary": summary}
    description = next(rule for rule in rules() if rule["alert"] == alert)["annotations"].get("description")
    if description:
        annotations["description"] = description
    return {"exp_labels": labels, "exp_annotations": annotations}


# Each alert against series that should fire it, and its neighbours that should not (promtool test rules).
RULE_TESTS = {
    "rule_files": [str(ALERT_RULES)],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                # saga_log at 85 % of its limit (reported by two replicas), chat_results at 10 %.
                {"series": 'supportmesh_jetstream_bytes{stream="KV_saga_log",pod="a"}', "values": "850x15"},
                {"series": 'supportmesh_jetstream_bytes{stream="KV_saga_log",pod="b"}', "values": "850x15"},
                {"series": 'supportmesh_jetstream_max_bytes{stream="KV_saga_log",pod="a"}', "values": "1000x15"},
                {"series": 'supportmesh_jetstream_max_bytes{stream="KV_saga_log",pod="b"}', "values": "1000x15"},
                {"series": 'supportmesh_jetstream_bytes{stream="KV_chat_results"}', "values": "100x15"},
                {"series": 'supportmesh_jetstream_max_bytes{stream="KV_chat_results"}', "values": "1000x15"},
                # no limit (-1): never an alert
                {"series": 'supportmesh_jetstream_bytes{stream="SUPPORT"}', "values": "5000x15"},
                {"series": 'supportmesh_jetstream_max_bytes{stream="SUPPORT"}', "values": "-1x15"},
                # a backlog that grows (intent_analyzer) and a large one that shrinks (context_retriever)
                {"series": 'supportmesh_consumer_pending{actor="intent_analyzer"}', "values": "100+20x30"},
                {"series": 'supportmesh_consumer_pending{actor="context_retriever"}', "values": "1000-10x30"},
                {"series": 'supportmesh_dead_letters_total{actor="sentiment_analyzer"}', "values": "0 0 0 1 1 1"},
                {"series": 'supportmesh_dead_letters_total{actor="decision_router"}', "values": "0x5"},
                # /api/chat: 10 % 5xx; /api/sessions/{session_id}/history: none
                {"series": 'supportmesh_gateway_responses_total{route="/api/chat",code="2xx"}',
                 "values": "0+90x15"},
                {"series": 'supportmesh_gateway_responses_total{route="/api/chat",code="5xx"}',
                 "values": "0+10x15"},
                {"series": 'supportmesh_gateway_responses_total{route="/api/sessions/{session_id}/history",'
                           'code="2xx"}', "values": "0+50x15"},
                {"series": 'supportmesh_gateway_responses_total{route="/api/sessions/{session_id}/history",'
                           'code="5xx"}', "values": "0x15"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "SupportmeshJetStreamStorageHigh",
                 "exp_alerts": [fired("SupportmeshJetStreamStorageHigh", "JetStream KV_saga_log is 85% full",
                                      severity="warning", stream="KV_saga_log")]},
                {"eval_time": "10m", "alertname": "SupportmeshJetStreamStorageFull", "exp_alerts": []},
                {"eval_time": "14m", "alertname": "SupportmeshStorageUnwatched", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "SupportmeshConsumerBacklogGrowing",
                 "exp_alerts": [fired("SupportmeshConsumerBacklogGrowing",
                                      "intent_analyzer has 600 messages waiting and its backlog keeps growing",
                                      severity="warning", actor="intent_analyzer")]},
                {"eval_time": "4m", "alertname": "SupportmeshDeadLetters",
                 "exp_alerts": [fired("SupportmeshDeadLetters", "sentiment_analyzer dead-lettered 1 messages in 10 minutes",
                                      severity="warning", actor="sentiment_analyzer")]},
                {"eval_time": "2m", "alertname": "SupportmeshDeadLetters", "exp_alerts": []},
                {"eval_time": "12m", "alertname": "SupportmeshGatewayErrors",
                 "exp_alerts": [fired("SupportmeshGatewayErrors", "10% of /api/chat answers are 5xx",
                                      severity="critical", route="/api/chat")]},
            ],
        },
        {   # nobody exports the storage gauges (the escalation router is down)
            "interval": "1m",
            "input_series": [{"series": 'supportmesh_consumer_pending{actor="intent_analyzer"}', "values": "0x20"}],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "SupportmeshStorageUnwatched", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "SupportmeshStorageUnwatched", "exp_alerts": [fired(
                    "SupportmeshStorageUnwatched", "No JetStream storage metrics for 10 minutes: is the escalation "
                    "router running and scraped?", severity="warning")]},
            ],
        },
    ],
}


def test_alerts_fire_on_what_they_name(tmp_path) -> None:
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(RULE_TESTS, sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exported(text: str) -> set[str]:
    """Names of the metrics with at least one sample in a /metrics page."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


async def test_every_alert_metric_is_exported_by_a_real_process(gateway, harness) -> None:
    gw, client = gateway
    # The error handler in its own OS process: the storage gauges, backlog and dead letters.
    port = free_port()
    harness.spawn_actor("escalation_router", env={"SUPPORTMESH_METRICS_PORT": str(port)})
    assert (await client.get("/healthz")).status_code == 200  # a response, counted by route and status class
    names = exported((await client.get("/metrics")).text)
    wanted = rule_metrics()
    streams: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
            continue
        actor_names = exported(page)
        streams = {line.split('stream="')[1].split('"')[0] for line in page.splitlines()
                   if line.startswith("supportmesh_jetstream_max_bytes{")}
        if wanted <= names | actor_names and len(streams) == 7:
            break
        await asyncio.sleep(0.2)
    assert wanted - names - actor_names == set()
    assert streams == {"SUPPORT", "SUPPORT_TIMERS", "SUPPORT_DEADLETTERS", "KV_saga_log", "KV_saga_state",
                       "KV_saga_running",
                       "KV_chat_results"}
