"""A process that exports no spans records none, yet keeps the trace id flowing (observability/tracing.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from observability.tracing import exporting_sampler

REPO = Path(__file__).resolve().parents[2]

UNEXPORTED = """
import json
from opentelemetry import trace
from observability.hooks import ObservabilityHooks
from observability.tracing import current_trace_id, inject_headers, setup_tracing, tracer

setup_tracing("supportmesh-test")

class Message:
    message_id, step_index = "m1", 1

# A client's traceparent marked sampled, as a step's headers would carry it.
incoming = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
hooks = ObservabilityHooks()
with hooks.step_span("sentiment_analyzer", "ecommerce.support.sentiment_analyzer", Message, "m1:1", 1, incoming):
    recording = [trace.get_current_span().is_recording()]
    with hooks.publish_span("ecommerce.support.intent_analyzer", "m1", "m1:2"):
        outgoing = inject_headers()
    in_step = current_trace_id()
with tracer().start_as_current_span("POST /api/chat") as root:
    root_id = current_trace_id()
    recording.append(root.is_recording())
print(json.dumps({"recording": any(recording), "in_step": in_step,
                  "outgoing": outgoing["traceparent"], "root_id": root_id}))
"""


def test_spans_nobody_exports_are_not_recorded_but_carry_the_trace() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", UNEXPORTED], env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["recording"] is False
    # The incoming trace goes on: into the step, and to the next hop with a span id of its own, not sampled.
    assert seen["in_step"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    version, trace_id, span_id, flags = seen["outgoing"].split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and span_id != "00f067aa0ba902b7"
    assert int(flags, 16) & 1 == 0
    # A message that starts without one still gets a trace id of its own (responses and saga events carry it).
    assert seen["root_id"] is not None and len(seen["root_id"]) == 32 and int(seen["root_id"], 16) != 0


def test_the_sdk_samples_when_spans_are_exported_or_a_sampler_is_chosen() -> None:
    assert exporting_sampler({}) is ALWAYS_OFF
    assert exporting_sampler({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is None
    assert exporting_sampler({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}) is None
    assert exporting_sampler({"OTEL_TRACES_SAMPLER": "traceidratio"}) is None
    assert exporting_sampler({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is ALWAYS_OFF
