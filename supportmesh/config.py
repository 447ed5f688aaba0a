"""Configuration of every supportmesh process, from environment variables (prefix `SUPPORTMESH_`).

One settings object for all processes keeps the names in one place: the local runner, the k8s manifests
and the tests all set the same variables.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# LiteLLM reaches for the internet at import unless told otherwise; every process sets these early.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Settings(BaseSettings):
    """Settings shared by the gateway, the actors, the mock APIs and the local runner."""

    model_config = SettingsConfigDict(env_prefix="SUPPORTMESH_", extra="ignore")

    # transport and state
    nats_url: str = "nats://127.0.0.1:4222"
    stream_name: str = "SUPPORT"
    stream_max_age_s: float = 24 * 3600
    duplicate_window_s: float = 120.0
    saga_ttl_s: float = 7 * 24 * 3600
    redis_url: str = "redis://127.0.0.1:6379/0"
    session_ttl_s: int = 24 * 3600
    sqlite_path: str = ".supportmesh/history.db"

    # mock commerce APIs (one process serves all three by default)
    customers_api_url: str = "http://127.0.0.1:8100"
    orders_api_url: str = "http://127.0.0.1:8100"
    tracking_api_url: str = "http://127.0.0.1:8100"
    api_timeout_s: float = 2.0

    # LLM (any LiteLLM model name; the default needs no key and no network)
    llm_model: str = "supportmesh-local/deterministic"
    llm_fallback_model: str = "supportmesh-local/deterministic"
    llm_timeout_s: float = 20.0
    llm_retries: int = 1
    llm_log_content: bool = False
    llm_api_base: str = ""
    # Below this intent confidence the decision router hands the message to a human.
    min_intent_confidence: float = 0.6

    # actors
    actor_concurrency: int = 16
    max_attempts: int = 4
    backoff_base_s: float = 0.25
    backoff_max_s: float = 5.0
    # How long JetStream waits before redelivering an un-acked step: the time to recover from a killed
    # process. Long steps stay alive with in_progress heartbeats (every ack_wait/3), so it can be short.
    ack_wait_s: float = 10.0
    # Recovery (escalation router): how often a failed saga is resumed before it is compensated and escalated.
    max_redeliveries: int = 1
    redelivery_delay_s: float = 1.0
    # How long compensation keeps retrying an undo (undo calls are idempotent, so retrying is safe), counted
    # from the saga's first `compensation_started`, and the longest pause between two tries. Past the
    # deadline the reversal is left to a human (`compensation_failed`, named in the reply and the ticket).
    compensation_deadline_s: float = Field(default=900.0, gt=0, le=7 * 24 * 3600)
    compensation_backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    # The sweeper (in the error handler's process) resumes `running` and `compensating` sagas with no event
    # for `stall_after_s`, at most `max_sweeps` times per step, then hands them to the error handler. A saga
    # whose start was never recorded (the gateway refused it) is marked failed after `stall_after_s`.
    sweep_interval_s: float = 5.0
    stall_after_s: float = 60.0
    max_sweeps: int = 2
    max_ack_pending: int = 256
    # Benchmarks only: False skips every saga-log write, and with it memoization and recovery.
    saga_log_enabled: bool = True

    # gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    chat_deadline_s: float = 10.0
    jaeger_ui_url: str = "http://127.0.0.1:16686"
    # Where the widget's files are (default: the repository's web/ folder; the container image sets it).
    web_dir: str = ""

    # observability: every process serves /metrics (actors on this port; 0 = pick a free one)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    service_name: str = Field(default="supportmesh")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
