"""The provider path for real: LiteLLM against an OpenAI-compatible server on loopback — a normal completion, a
provider error with fallback to the local model (recorded), and malformed JSON answered by a re-ask."""

from __future__ import annotations

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
from fakes import FakeContext, make_message
from observability import metrics
from supportmesh.config import Settings
from supportmesh.natsserver import free_port


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
    print(f"local model through LiteLLM: {per_call_ms:.2f} ms per call")  # reported, not asserted
    assert '"delivery_complaint"' in result.text
