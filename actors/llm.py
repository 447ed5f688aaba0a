"""The LLM client: the local model called directly, every other model through `litellm.acompletion`.

Model, timeout, retries and fallback come from settings (`SUPPORTMESH_LLM_*`). The default model is the local
deterministic one (`actors.local_model`), called in-process: LiteLLM would cost it about 3 ms of CPU per call
(a thread hop, a logging and a cost record) for a sub-millisecond answer. Any LiteLLM model name
(`gpt-4o-mini`, `anthropic/...`, `ollama/llama3.1`, `openai/<name>` with `SUPPORTMESH_LLM_API_BASE`) is one
setting away and goes through LiteLLM. When the configured provider fails after its retries, the call falls back
to the local model and says so (`fallback_used`, and the `supportmesh_llm_fallbacks_total` metric). Each call is
a GenAI client span of ours with the same attributes and metrics on both paths; a call through LiteLLM also has
LiteLLM's own `litellm_request` span beneath it (the local model's has none: LiteLLM is not involved). Prompts
and completions are kept out of spans unless `SUPPORTMESH_LLM_LOG_CONTENT=true`. LiteLLM is imported only by
processes whose configured or fallback model needs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from actors import local_model
from actors.base import RetryableError
from config.settings import LOCAL_LLM_MODEL, Settings
from observability import metrics
from observability.tracing import instrument_litellm, tracer

log = logging.getLogger("supportmesh.llm")
LOCAL_MODEL = LOCAL_LLM_MODEL  # the default model, local and deterministic


@dataclass
class LLMResult:
    """One completion."""

    text: str
    model: str
    fallback_used: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


@dataclass
class _Answer:
    """What either path returns to `_call`."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    response_model: str


class LLMClient:
    """Completions with timeout, retries, metrics, a GenAI span and a fallback to the local model."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self.fallback_model = settings.llm_fallback_model or LOCAL_MODEL
        self.timeout_s = settings.llm_timeout_s
        self.retries = settings.llm_retries
        self.api_base = settings.llm_api_base or None
        self.log_content = settings.llm_log_content
        self._litellm: Any = None
        if {self.model, self.fallback_model} != {LOCAL_MODEL}:  # a hosted model: LiteLLM is its interface
            self._litellm = _load_litellm(self.log_content)

    async def warm_up(self) -> None:
        """One call to the local model at start: through LiteLLM when a hosted model is configured, so LiteLLM's
        lazy initialisation is paid at start, not by a customer."""
        try:
            await self._call(LOCAL_MODEL, [{"role": "user", "content": "ping"}], "warm_up", api_base=None,
                             retries=0, via_litellm=self._litellm is not None)
        except Exception:  # a failed warm-up only means the first real call pays the cost
            log.warning("LLM warm-up failed", exc_info=True)

    async def complete(self, messages: list[dict[str, str]], *, purpose: str) -> LLMResult:
        """The model's answer; falls back to the local model when the configured provider fails."""
        try:
            return await self._call(self.model, messages, purpose, api_base=self.api_base, retries=self.retries)
        except Exception as exc:
            if self.model == self.fallback_model:
                raise RetryableError(f"LLM call failed: {type(exc).__name__}: {exc}") from exc
            log.warning("LLM %s failed (%s); falling back to %s", self.model, type(exc).__name__, self.fallback_model)
            metrics.LLM_FALLBACKS.labels(self.model).inc()
            try:
                result = await self._call(self.fallback_model, messages, purpose, api_base=None, retries=0)
            except Exception as exc2:
                raise RetryableError(f"LLM and fallback failed: {type(exc2).__name__}: {exc2}") from exc2
            result.fallback_used = True
            return result

    async def _call(self, model: str, messages: list[dict[str, str]], purpose: str, *, api_base: str | None,
                    retries: int, via_litellm: bool = False) -> LLMResult:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": model.split("/", 1)[0] if "/" in model else "openai",
            "gen_ai.request.model": model,
            "supportmesh.llm.purpose": purpose,
        }
        if self.log_content:
            attrs["gen_ai.prompt"] = "\n".join(m["content"] for m in messages)[:8000]
        started = time.perf_counter()
        with tracer().start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attrs) as span:
            try:
                if model == LOCAL_MODEL and not via_litellm:
                    answer = _local(messages)
                else:
                    answer = await self._through_litellm(model, messages, api_base=api_base, retries=retries)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise
            latency = time.perf_counter() - started
            span.set_attribute("gen_ai.usage.input_tokens", answer.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", answer.completion_tokens)
            span.set_attribute("gen_ai.response.model", answer.response_model)
            if self.log_content:
                span.set_attribute("gen_ai.completion", answer.text[:8000])
        metrics.LLM_LATENCY_SECONDS.labels(model, purpose).observe(latency)
        metrics.LLM_TOKENS.labels(model, "prompt").inc(answer.prompt_tokens)
        metrics.LLM_TOKENS.labels(model, "completion").inc(answer.completion_tokens)
        return LLMResult(text=answer.text, model=model, prompt_tokens=answer.prompt_tokens,
                         completion_tokens=answer.completion_tokens, latency_s=latency)

    async def _through_litellm(self, model: str, messages: list[dict[str, str]], *, api_base: str | None,
                               retries: int) -> _Answer:
        if self._litellm is None:  # a client built for the local model only, asked for another
            self._litellm = _load_litellm(self.log_content)
        kwargs: dict[str, Any] = {"timeout": self.timeout_s, "num_retries": retries}
        if api_base:
            kwargs["api_base"] = api_base
        response = await self._litellm.acompletion(model=model, messages=messages, **kwargs)
        usage = getattr(response, "usage", None)
        return _Answer(text=response.choices[0].message.content or "",
                       prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                       completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                       response_model=str(getattr(response, "model", model)))


def _local(messages: list[dict[str, str]]) -> _Answer:
    """The local model's answer, in-process (no LiteLLM, no thread: it is a sub-millisecond CPU computation)."""
    answer = local_model.complete(messages)
    return _Answer(text=answer.text, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                   response_model=answer.model)


def _load_litellm(log_content: bool) -> Any:
    """LiteLLM, set up once per process: quiet, the local model registered as a provider (for the warm-up), and
    its `litellm_request` span under ours (message text only with SUPPORTMESH_LLM_LOG_CONTENT=true)."""
    import litellm

    local_model.register()
    litellm.suppress_debug_info = True
    instrument_litellm(log_content=log_content)
    return litellm
