"""The provider path for real: LiteLLM against an OpenAI-compatible server on loopback — a normal completion, a
provider error with fallback to the local model (recorded), malformed JSON answered by a re-ask, and LiteLLM's
own OpenTelemetry span under ours, exported over OTLP, with message text only when configured."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from actors.intent_analyzer import IntentAnalyzer
from actors.llm import LLMClient
from actors.prompts import intent_messages
from config.settings import Settings
from observability import metrics
from supportmesh.natsserver import free_port

from tests.support import REPO
from tests.support.fakes import FakeContext, make_message
from tests.support.otlp_receiver import OTLPReceiver


class FakeProvider:
    """An OpenAI-compatible chat completions server whose answers the test scripts."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str]] = []
        self.requests: list[dict] = []
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def completions(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append(body)
            status, text = self.answers.pop(0) if self.answers else (200, "ok")
            if status != 200:
                return JSONResponse({"error": {"message": text, "type": "server_error"}}, status_code=status)
            return JSONResponse({
                "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            })


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield fake, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)


def client_for(api_base: str) -> LLMClient:
    return LLMClient(Settings(llm_model="openai/test-model", llm_api_base=api_base, llm_retries=0,
                              llm_timeout_s=5))


async def test_completion_through_litellm(provider, monkeypatch) -> None:
    fake, base = provider
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fake.answers = [(200, "Hello from the provider")]
    result = await client_for(base).complete([{"role": "user", "content": "hi"}], purpose="response")
    assert result.text == "Hello from the provider" and not result.fallback_used
    assert result.prompt_tokens == 11 and result.completion_tokens == 7
    assert fake.requests[-1]["model"] == "test-model"


async def test_provider_error_falls_back_to_the_local_model(provider, monkeypatch) -> None:
    fake, base = provider
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fake.answers = [(500, "boom"), (500, "boom"), (500, "boom")]
    before = metrics.LLM_FALLBACKS.labels("openai/test-model")._value.get()
    result = await client_for(base).complete(intent_messages("My order 12345 is late!"), purpose="intent")
    assert result.fallback_used and result.model == "supportmesh-local/deterministic"
    assert '"delivery_complaint"' in result.text
    assert metrics.LLM_FALLBACKS.labels("openai/test-model")._value.get() == before + 1
    fake.answers = []


async def test_malformed_json_is_asked_again(provider, monkeypatch) -> None:
    fake, base = provider
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fake.answers = [(200, "It's a refund, I think!"),
                    (200, '```json\n{"intent": "refund_request", "entities": {}, "confidence": 0.85}\n```')]
    seen = len(fake.requests)
    actor = IntentAnalyzer()
    actor.llm = client_for(base)
    out = await actor.handle(make_message("refund my order 12345"), FakeContext())
    assert len(fake.requests) == seen + 2  # the second request is the re-ask
    assert "not valid" in fake.requests[-1]["messages"][-1]["content"]
    assert out["intent"].name == "refund_request" and out["intent"].reasked
    assert out["intent"].entities.order_number == "12345"


async def test_local_model_call_time() -> None:
    client = LLMClient(Settings())
    messages = intent_messages("My order 12345 is late!")
    await client.complete(messages, purpose="intent")
    n = 50
    started = time.perf_counter()
    for _ in range(n):
        result = await client.complete(messages, purpose="intent")
    per_call_ms = (time.perf_counter() - started) / n * 1000
    print(f"local model (called directly): {per_call_ms:.2f} ms per call")  # reported, not asserted
    assert '"delivery_complaint"' in result.text


# One actor process's LLM call, as an actor makes it: the client is built before tracing is set up (the actor
# is constructed first), the call runs inside a span, LiteLLM's callbacks are flushed, spans exported over OTLP.
TRACED_CALL = """
import asyncio, sys
from actors.llm import LLMClient  # first: it sets LiteLLM's offline settings before LiteLLM is imported
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from observability.tracing import setup_tracing, shutdown_tracing, tracer
from config.settings import Settings

class Ended(SpanProcessor):
    names: list = []
    def on_end(self, span) -> None:
        self.names.append(span.name)

async def main() -> None:
    client = LLMClient(Settings(llm_model="openai/test-model", llm_api_base=sys.argv[1], llm_retries=0,
                                llm_timeout_s=5))
    setup_tracing("supportmesh-llm-test")
    trace.get_tracer_provider().add_span_processor(Ended())
    with tracer().start_as_current_span("process ecommerce.support.response_generator"):
        await client.complete([{"role": "user", "content": sys.argv[2]}], purpose="response")
    for _ in range(200):  # LiteLLM's success callbacks run after the call returns
        if "litellm_request" in Ended.names:
            break
        await asyncio.sleep(0.05)

asyncio.run(main())
shutdown_tracing()
"""
SECRET = "Ticket for Zebulon Quartzfield about order 98765"


def traced_call(base: str, *, log_content: bool) -> list:
    """Run TRACED_CALL in a fresh process exporting to a test receiver; the spans of its one trace."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test",
           "SUPPORTMESH_LLM_LOG_CONTENT": "true" if log_content else "false"}
    env.pop("USE_OTEL_LITELLM_REQUEST_SPAN", None)
    with OTLPReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        out = subprocess.run([sys.executable, "-c", TRACED_CALL, base, SECRET], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert receiver.wait_for(lambda r: any(s.name == "litellm_request" for s in r.spans), timeout=10), \
            ([s.name for s in receiver.spans], out.stderr[-2000:])
        return list(receiver.spans)


UNEXPORTED_CALL = """
import asyncio, sys
from actors.llm import LLMClient
from observability.tracing import setup_tracing, shutdown_tracing, tracer
from config.settings import Settings

async def main() -> None:
    client = LLMClient(Settings(llm_model="openai/test-model", llm_api_base=sys.argv[1], llm_retries=0,
                                llm_timeout_s=5))
    setup_tracing("supportmesh-llm-test")
    with tracer().start_as_current_span("process ecommerce.support.response_generator") as span:
        result = await client.complete([{"role": "user", "content": "where is my order?"}], purpose="response")
        print("recording", span.is_recording(), "answer", result.text)
    await asyncio.sleep(0.5)  # LiteLLM's success callbacks (its OpenTelemetry one too) run after the call returns

asyncio.run(main())
shutdown_tracing()
"""


def test_a_litellm_call_where_no_spans_are_exported(provider) -> None:
    """Without an OTLP endpoint spans are non-recording (observability/tracing.py): a model served through
    LiteLLM still answers, and LiteLLM's OpenTelemetry callback copes with the non-recording parent."""
    fake, base = provider
    fake.answers = [(200, "Your order 98765 is on its way")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", UNEXPORTED_CALL, base], capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recording False answer Your order 98765 is on its way" in out.stdout, out.stdout[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


def test_litellm_span_is_a_child_of_ours_without_message_text(provider) -> None:
    fake, base = provider
    fake.answers = [(200, "Your refund for order 98765 is on its way")]
    spans = traced_call(base, log_content=False)
    by_id = {s.span_id: s for s in spans}
    ours = [s for s in spans if s.name == "chat openai/test-model"]
    theirs = [s for s in spans if s.name == "litellm_request"]
    assert len(ours) == 1 and len(theirs) == 1, [s.name for s in spans]
    assert theirs[0].parent_id == ours[0].span_id and theirs[0].trace_id == ours[0].trace_id
    assert by_id[ours[0].parent_id].name.startswith("process ")  # one tree: process span > ours > LiteLLM's
    assert theirs[0].service == "supportmesh-llm-test"  # the process's provider, not one LiteLLM built
    assert theirs[0].attributes["gen_ai.usage.input_tokens"] == 11
    for span in spans:
        leaked = [t for t in span.texts() if "Zebulon" in t or "on its way" in t]
        assert not leaked, (span.name, leaked)


def test_message_text_in_spans_only_when_configured(provider) -> None:
    fake, base = provider
    fake.answers = [(200, "Your refund for order 98765 is on its way")]
    spans = traced_call(base, log_content=True)
    theirs = next(s for s in spans if s.name == "litellm_request")
    assert any("Zebulon" in t for t in theirs.texts())  # LiteLLM's message logging is on
    assert any("on its way" in t for t in theirs.texts())
