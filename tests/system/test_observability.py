"""Observability: one trace per customer message across every process (exported over OTLP to a receiver the
test runs), its GenAI spans (and LiteLLM's span under those of models LiteLLM serves), no customer text in any span, trace ids in the logs, and Grafana dashboards
whose every panel shows the retries, compensations, escalations and dead letters of a real faulty load, from a
real Prometheus scraping the running mesh, with Jaeger links that name services that really export traces."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import nats
import promql_parser
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from actors import registry
from observability import metrics
from observability.logs import JsonFormatter, TraceContextFilter, TraceIndex
from observability.prometheus import ALERT_RULES, render_scrape_config
from config.settings import LOCAL_LLM_MODEL
from supportmesh.credentials import nats_options

from tests.support import REPO
from tests.support.chat_client import answer
from tests.support.mesh import Mesh
from tests.support.otlp_receiver import OTLPReceiver, Span

ACTORS = registry.names(registry.ACTORS)
GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# $__range covers the whole life of the test's mesh, so increase() over it counts every saga it ran.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "10m"}
METRIC = re.compile(r"\b(supportmesh_[a-z0-9_]+)")
FIELD_LABEL = re.compile(r"\$\{__field\.labels\.([a-z_]+)(?::[a-z]+)?\}")


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana variables substituted) for every panel target."""
    return [(board, panel["title"], expr) for board, panel, _, expr in panel_targets()]


def panel_targets() -> list[tuple[str, dict, dict, str]]:
    """(dashboard title, panel, target, PromQL with Grafana variables substituted) for every panel target."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                out.append((board["title"], panel, target, expr))
    return out


def latency_panels() -> list[dict]:
    """Panels that show latency (a histogram quantile)."""
    return [panel for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
            if any("histogram_quantile" in t["expr"] for t in panel["targets"])]


def jaeger_search(url: str) -> dict:
    """The Jaeger query of a Grafana Explore link (Grafana variables left as written)."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.path == "/explore" and not parsed.netloc, url
    panes = json.loads(urllib.parse.parse_qs(parsed.query)["panes"][0])
    (pane,) = panes.values()
    (query,) = pane["queries"]
    assert pane["datasource"] == "${jaeger}" and query["datasource"] == {"type": "jaeger", "uid": "${jaeger}"}, pane
    assert query["queryType"] == "search" and query["service"], query
    return query


def resolve(template: str, labels: dict[str, str]) -> str:
    """A data link field as Grafana fills it for one series."""
    return FIELD_LABEL.sub(lambda m: labels.get(m.group(1), f"<no label {m.group(1)}>"), template)


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
        variables = {v["name"]: v for v in board["templating"]["list"]}
        # Both datasources by variable: the Jaeger one is what every trace link opens.
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert variables["jaeger"]["type"] == "datasource" and variables["jaeger"]["query"] == "jaeger"
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
        for link in board["links"]:
            jaeger_search(link["url"])
        assert "jaeger_url" not in json.dumps(board)


def test_every_latency_panel_links_to_its_traces() -> None:
    panels = latency_panels()
    assert len(panels) >= 4
    for panel in panels:
        links = panel["fieldConfig"]["defaults"]["links"]
        assert links, panel["title"]
        for link in links:
            query = jaeger_search(link["url"])
            for name in FIELD_LABEL.findall(query["service"] + query.get("operation", "")):
                # A per-series link only works when every target of the panel keeps that label.
                assert all(name in t["expr"] for t in panel["targets"]), (panel["title"], name)


def test_backlog_is_not_summed_over_replicas() -> None:
    """Every replica reports its actor's consumer figures (one consumer per actor): summing them over replicas
    would multiply the backlog by the replica count."""
    gauges = [(title, expr) for _, title, expr in panel_queries() if "supportmesh_consumer_" in expr]
    assert len(gauges) == 2
    for title, expr in gauges:
        assert re.fullmatch(r"max by \(actor\) \(supportmesh_consumer_[a-z_]+\)", expr), (title, expr)


def test_log_lines_about_a_message_carry_its_trace_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContextFilter(TraceIndex(size=2)))
    logger = logging.getLogger("supportmesh.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    tid = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    span = NonRecordingSpan(SpanContext(tid, 0x00F067AA0BA902B7, is_remote=False,
                                        trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    try:
        with trace.use_span(span):
            logger.info("step done", extra={"message_id": "m1"})
        logger.warning("resumed later, outside the span", extra={"message_id": "m1"})
        logger.warning("a message this process never traced", extra={"message_id": "m2"})
        logger.info("process started")
        logger.info("given", extra={"message_id": "m3", "trace_id": "ab" * 16})
        logger.info("given", extra={"message_id": "m4", "trace_id": "cd" * 16})
        logger.info("m1 forgotten (bounded)", extra={"message_id": "m1"})
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["trace_id"] == f"{tid:032x}" and lines[0]["span_id"] == "00f067aa0ba902b7"
    assert lines[1]["trace_id"] == f"{tid:032x}" and "span_id" not in lines[1]
    assert "trace_id" not in lines[2] and "trace_id" not in lines[3]
    assert lines[4]["trace_id"] == "ab" * 16 and lines[5]["trace_id"] == "cd" * 16
    assert "trace_id" not in lines[6]


def test_provisioning_references_every_dashboard() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yaml").read_text())["datasources"]
    assert {s["type"] for s in sources} == {"prometheus", "jaeger"}
    # The folder provider loads every JSON of grafana/dashboards/ (k8s mounts exactly that folder there).
    assert DASHBOARDS and all(p.parent.name == "dashboards" for p in DASHBOARDS)


def fake_command(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("args", ["--observability", ""])
def test_make_run_installs_prometheus_only_for_observability(tmp_path, args: str) -> None:
    """`make run ARGS=--observability` on a machine without Prometheus asks apt for it (and only then), as the
    local Prometheus is what --observability starts. apt, sudo and the mesh itself are stand-ins here."""
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    bin_dir.mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed-stamp").touch()  # newer than pyproject.toml: nothing to install
    calls = tmp_path / "calls.log"
    fake_command(bin_dir / "apt-get", f'echo "apt-get $*" >> {calls}')
    fake_command(bin_dir / "sudo", 'exec "$@"')
    fake_command(bin_dir / "redis-server", "exit 0")  # present: only Prometheus is missing
    fake_command(venv / "bin" / "supportmesh", f'echo "supportmesh $*" >> {calls}')
    for tool in ("bash", "id"):  # PATH has these and the stand-ins only: no prometheus on it
        (bin_dir / tool).symlink_to(shutil.which(tool))
    out = subprocess.run([shutil.which("make"), "-C", str(GRAFANA.parent), "run", f"VENV={venv}", f"ARGS={args}"],
                         env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    recorded = calls.read_text().splitlines()
    assert recorded[-1].split() == ["supportmesh", "up", *args.split()]
    installs = [line for line in recorded if line.startswith("apt-get install")]
    if args:
        assert len(installs) == 1 and "prometheus" in installs[0].split(), recorded
        assert "--no-install-recommends" in installs[0]
    else:
        assert not installs, recorded


def test_generated_scrape_config_passes_promtool(tmp_path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(render_scrape_config({"gateway": ["127.0.0.1:8000"], "intent_analyzer": ["127.0.0.1:9101"]},
                                           rule_files=[ALERT_RULES]))
    out = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


JOB_TO_SERVICE = re.compile(r'label_replace\(.*, "service", "([^"]+)", "job", "([^"]+)"\)$')


def test_scrape_jobs_and_services_are_named_as_the_traced_services() -> None:
    """A series leads to its process's traces: the `service` label is the OpenTelemetry service name the process
    exports (its Kubernetes pod sets the same), the job is named as in Kubernetes, and the dashboards' rewrite
    of the job into a service gives that name too."""
    sys.path.insert(0, str(GRAFANA.parent / "k8s"))
    import generate_actors

    processes = ["gateway", "mocks", *ACTORS]
    config = yaml.safe_load(render_scrape_config({p: [f"127.0.0.1:{9100 + i}"] for i, p in enumerate(processes)}))
    services = {job["job_name"]: job["static_configs"][0]["labels"]["service"] for job in config["scrape_configs"]}
    settings = generate_actors.pod_settings()
    pods = [generate_actors.deployment(spec, settings) for spec in registry.ACTORS]
    in_k8s = {pod["metadata"]["name"]: env["value"] for pod in pods
              for env in pod["spec"]["template"]["spec"]["containers"][0]["env"] if env["name"] == "OTEL_SERVICE_NAME"}
    assert services["gateway"] == "supportmesh-gateway" and services["mocks"] == "supportmesh-mocks"
    for actor in ACTORS:
        job = actor.replace("_", "-")
        assert services[job] == service_of(actor) == in_k8s[job], actor
    rewrites = [JOB_TO_SERVICE.search(expr) for _, _, expr in panel_queries() if '"job"' in expr]
    assert rewrites and all(rewrites)
    for rewrite in rewrites:
        replacement, pattern = rewrite.group(1), re.compile(rewrite.group(2))
        for actor in ("intent_analyzer", "response_generator"):  # the processes that call an LLM
            job = actor.replace("_", "-")
            # PromQL anchors label_replace's regex: the whole job must match.
            assert pattern.fullmatch(job), (pattern.pattern, job)
            assert pattern.sub(re.sub(r"\$(\d)", r"\\\1", replacement), job) == services[job]


# ---- against a running mesh ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory):
    with OTLPReceiver() as receiver:
        mesh = Mesh(tmp_path_factory.mktemp("obs-mesh"), observability=True, env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "SUPPORTMESH_SCRAPE_INTERVAL": "1s",
            # Short retry backoff and recovery delay: the faulty load below finishes in seconds.
            "SUPPORTMESH_BACKOFF_BASE_S": "0.1", "SUPPORTMESH_BACKOFF_MAX_S": "0.4",
            "SUPPORTMESH_REDELIVERY_DELAY_S": "0.2",
            # One chat, one trace, through the whole route: no wait for the customer's yes here (the trace of a
            # wait, a span link from the resumed step to the waiting one, is tests/unit/saga/test_waits.py's).
            "SUPPORTMESH_CONFIRM_ACTIONS": "false"}).start()
        try:
            wait_for_first_scrapes(mesh.endpoints["prometheus_url"])
            yield mesh, receiver
        finally:
            mesh.stop()


def wait_for_first_scrapes(prom: str, processes: int = 11, timeout_s: float = 30) -> None:
    """Until Prometheus has scraped every process once. A counter's first sample must be its zero: an event
    that happens before it is in no sample, and `increase()` cannot count it (in production Prometheus runs
    long before the first customer message)."""
    deadline = time.monotonic() + timeout_s
    targets: list[dict] = []
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        if len(targets) >= processes and all(t["health"] == "up" for t in targets):
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus has not scraped every process: {targets}")


CHATS = ["My order 12345 is late!", "I want a refund for order 44444", "This is fraud, I will call my lawyer",
         "Where is 1Z999AA10123456784?", "asdf qwer"]


@pytest.fixture(scope="module")
def chats(traced_mesh):
    mesh, _ = traced_mesh
    return [answer(mesh.gateway_url, text) for text in CHATS]


def service_of(actor: str) -> str:
    """The OpenTelemetry service name of an actor's process."""
    return f"supportmesh-{actor.replace('_', '-')}"


def through_litellm(span: Span) -> bool:
    """Whether an LLM call's GenAI span is of a model LiteLLM serves: every model but the local one, which the
    LLM client calls directly (tests/unit/actors/test_llm.py checks LiteLLM's span of a hosted model)."""
    return span.attributes.get("gen_ai.request.model") != LOCAL_LLM_MODEL


def trace_is_complete(spans: list[Span], services: set[str]) -> bool:
    """Every expected service exported, one root, no span whose parent is missing, the gateway's publish span,
    and LiteLLM's span under every LLM call it serves (processes export in batches; LiteLLM's span comes last)."""
    ids = {s.span_id for s in spans}
    llm_calls = [s for s in spans if s.name.startswith("chat ") and s.kind == "CLIENT" and through_litellm(s)]
    return (services <= {s.service for s in spans} and any(not s.parent_id for s in spans)
            and all(not s.parent_id or s.parent_id in ids for s in spans)
            and any(s.kind == "PRODUCER" and s.service == "supportmesh-gateway" for s in spans)
            and all(any(s.name == "litellm_request" and s.parent_id == c.span_id for s in spans) for c in llm_calls))


@pytest.fixture(scope="module")
def chat_traces(traced_mesh, chats) -> list[tuple[dict, list[str], list[Span]]]:
    """(chat, route taken, spans of its trace) for every chat, once each trace has fully arrived."""
    mesh, receiver = traced_mesh
    out = []
    for chat in chats:
        saga = httpx.get(f"{mesh.gateway_url}/api/sagas/{chat['message_id']}", timeout=10, headers=mesh.auth()).json()
        route = [e["actor"] for e in saga["events"] if e["kind"] == "step_completed"]
        expected = {"supportmesh-gateway"} | {service_of(a) for a in route}
        if "context_retriever" in route:  # the mock APIs export the server spans of its calls in their own batches
            expected.add("supportmesh-mocks")
        done = receiver.wait_for(lambda r, t=chat["trace_id"], want=expected: trace_is_complete(
            r.traces().get(t, []), want), timeout=30)
        spans = receiver.traces().get(chat["trace_id"], [])
        assert done, (chat["response"][:80], expected, sorted({(s.service, s.name) for s in spans}))
        out.append((chat, route, spans))
    return out


@pytest.mark.e2e
def test_one_trace_per_message_across_every_process(chat_traces) -> None:
    assert len(chat_traces) == len(CHATS)
    for chat, route, spans in chat_traces:
        expected = {"supportmesh-gateway"} | {service_of(a) for a in route}
        ids = {s.span_id for s in spans}
        by_id = {s.span_id: s for s in spans}
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
        llm = [s for s in spans if s.name.startswith("chat ") and s.kind == "CLIENT"]
        if "intent_analyzer" in route or "response_generator" in route:
            assert llm and all(s.attributes["gen_ai.request.model"] and "gen_ai.usage.input_tokens" in s.attributes
                               and s.attributes["gen_ai.usage.output_tokens"] > 0 for s in llm)
        # LiteLLM's own span: exactly one under each of our GenAI spans of a model it serves, same process, same
        # trace; none under the local model's (called directly, LiteLLM is not involved).
        litellm_spans = [s for s in spans if s.name == "litellm_request"]
        assert len(litellm_spans) == len([s for s in llm if through_litellm(s)])
        for s in litellm_spans:
            parent = by_id[s.parent_id]
            assert parent in llm and parent.service == s.service, (parent.name, s.service)
            assert s.attributes["gen_ai.usage.output_tokens"] > 0


@pytest.mark.e2e
def test_no_customer_text_in_spans(traced_mesh, chat_traces) -> None:
    _, receiver = traced_mesh
    assert len(chat_traces) == len(CHATS)  # every chat's trace arrived whole before anything is checked
    texts = [t.lower() for t in CHATS]
    checked = 0
    for span in list(receiver.spans):
        for value in span.texts():  # name, attributes, events and status message
            assert not any(t in value.lower() for t in texts), (span.service, span.name, value[:100])
            checked += 1
    assert sum(len(spans) for _, _, spans in chat_traces) >= 10 * len(CHATS) and checked > 1000


# ---- a faulty load for the dashboards ------------------------------------------------------------------

# The refund is performed and its answer lost (503) on every try: the execution step exhausts its retries, is
# resumed once, fails again, and the refund is compensated and the saga escalated. The first two tracking
# lookups fail: a step retried that then succeeds. A poison message on an actor subject is dead-lettered.
LOAD_FAULTS = {"POST /orders/{order_id}/refunds": {"fail_after_effect_rate": 1.0},
               "GET /tracking/{tracking_id}": {"fail_first": 2}}
LOAD = ["I want a refund for order 12345", "Where is 1Z999AA10123456784?"]


async def publish_poison(endpoints: dict, actor: str) -> None:
    nc = await nats.connect(**nats_options(endpoints))
    try:
        await nc.jetstream().publish(f"ecommerce.support.{actor}", b"\x00 not a message")
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def faulty_load(traced_mesh, chats) -> list[dict]:
    mesh, _ = traced_mesh
    httpx.put(f"{mesh.mocks_url}/_admin/faults", json=LOAD_FAULTS, timeout=10).raise_for_status()
    try:
        asyncio.run(publish_poison(mesh.endpoints, "intent_analyzer"))
        results = [answer(mesh.gateway_url, text) for text in LOAD]
    finally:
        httpx.put(f"{mesh.mocks_url}/_admin/faults", json={}, timeout=10).raise_for_status()
    refund, tracking = results
    assert refund["status"] == "escalated" and tracking["status"] == "resolved", results
    return results


# What the load must show, by panel: series (label subsets) with a value above zero.
MUST_SHOW: dict[str, list[dict[str, str]]] = {
    "Retries scheduled per actor": [{"actor": "execution_coordinator"}, {"actor": "context_retriever"}],
    "Redeliveries by source": [{"source": "retry"}],
    "Compensations (side effects undone)": [{"action": "refund"}],
    "Escalations to a human by reason": [{"reason": "error"}, {"reason": "critical_sentiment"}],
    "Dead letters per actor": [{"actor": "intent_analyzer"}],
    "Saga events by kind": [{"kind": k} for k in ("retry_scheduled", "step_failed", "compensation_completed",
                                                   "escalated", "saga_completed", "dead_lettered")],
    "Steps per second by actor and outcome": [{"outcome": "retried"}, {"outcome": "completed"}],
}
# Gauges of a mesh at rest: a finite value (zero allowed).
# "Waiting for a person": hand-overs, which the load opens none of.
AT_REST = {"Chats in flight at the gateway", "Consumer backlog (pending)", "Delivered, not yet acked",
           "Waiting for a person"}


def query(prom: str, expr: str) -> tuple[str, list[tuple[dict, float]]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    if r.get("status") != "success":
        return r.get("error", "query failed"), []
    return "", [(row["metric"], float(row["value"][1])) for row in r["data"]["result"]]


def panel_problems(prom: str, statuses: list[str]) -> list[str]:
    """Why the dashboards do not yet show the load (an empty list once they all do)."""
    problems = []
    for board, panel, target, expr in panel_targets():
        title, legend = panel["title"], target.get("legendFormat", "")
        error, rows = query(prom, expr)
        finite = [(labels, v) for labels, v in rows if math.isfinite(v)]
        if error or not finite:
            problems.append(f"{board} / {title} / {legend}: no finite value {error}")
            continue
        if title == "Terminal states":
            want = statuses.count(legend)  # legends: resolved, escalated, failed
            if round(finite[0][1]) != want:
                problems.append(f"{title} / {legend}: {finite[0][1]:.2f}, want {want} (one per saga)")
        elif title in MUST_SHOW:
            for wanted in MUST_SHOW[title]:
                if not any(v > 0 and wanted.items() <= labels.items() for labels, v in finite):
                    problems.append(f"{title}: nothing above zero for {wanted}")
        elif title not in AT_REST and not any(v > 0 for _, v in finite):
            problems.append(f"{board} / {title} / {legend}: only zeros")
    return problems


@pytest.mark.e2e
def test_every_dashboard_panel_shows_the_load(traced_mesh, chats, faulty_load) -> None:
    mesh, _ = traced_mesh
    prom = mesh.endpoints["prometheus_url"]
    statuses = [c["status"] for c in chats] + [r["status"] for r in faulty_load]
    assert "escalated" in statuses and "resolved" in statuses
    problems: list[str] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        problems = panel_problems(prom, statuses)
        if not problems:
            break
        time.sleep(2)
    assert not problems, problems
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert len(targets) >= 11 and all(t["health"] == "up" for t in targets), [
        (t["labels"].get("job"), t["health"], t.get("lastError")) for t in targets if t["health"] != "up"]


@pytest.mark.e2e
def test_latency_links_name_services_and_operations_that_export_traces(traced_mesh, chat_traces,
                                                                        faulty_load) -> None:
    mesh, receiver = traced_mesh
    prom = mesh.endpoints["prometheus_url"]
    exported = {(s.service, s.name) for s in receiver.spans}
    services = {service for service, _ in exported}
    # Every scraped process's `service` label names a service whose traces were exported.
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    scraped = {t["labels"]["service"] for t in targets}
    assert len(scraped) >= 11 and scraped <= services, sorted(scraped - services)
    for panel in latency_panels():
        for link in panel["fieldConfig"]["defaults"]["links"]:
            search = jaeger_search(link["url"])
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                _, rows = query(prom, expr)
                assert rows, (panel["title"], expr)
                for labels, _ in rows:
                    service = resolve(search["service"], labels)
                    assert service in services, (panel["title"], labels, service, sorted(services))
                    if "operation" in search:
                        operation = resolve(search["operation"], labels)
                        assert (service, operation) in exported, (panel["title"], service, operation)


@pytest.mark.e2e
def test_log_lines_about_a_chat_carry_its_trace_id(traced_mesh, chats, faulty_load) -> None:
    mesh, _ = traced_mesh
    trace_of = {c["message_id"]: c["trace_id"] for c in [*chats, *faulty_load]}
    about: dict[str, list[dict]] = {}
    for path in (mesh.data_dir / "logs").glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("message_id") in trace_of:
                about.setdefault(record["message_id"], []).append(record)
    refund = faulty_load[0]["message_id"]
    assert len(about.get(refund, [])) >= 2, about.get(refund)  # its retries and its recovery were logged
    for message_id, records in about.items():
        for record in records:
            assert record.get("trace_id") == trace_of[message_id], record
