"""What the engine reads from the application's settings: a small Protocol that any settings object with these
attributes satisfies (the support mesh's `config.settings.Settings` does)."""

from __future__ import annotations

from typing import Protocol


class SagaSettings(Protocol):
    """Connection, stream, KV, retry and recovery settings of the engine."""

    nats_url: str  # one URL, or a cluster's seed URLs, comma-separated
    nats_replicas: int  # replicas of every stream and KV bucket
    nats_retry_s: float  # how long a JetStream write is retried while the bus cannot take it
    nats_user: str  # empty: anonymous (a server without authorization)
    nats_credentials: str  # the user's nkey seed file
    stream_name: str
    duplicate_window_s: float
    stream_max_age_s: float
    stream_max_bytes: int
    deadletter_max_bytes: int
    timers_max_bytes: int
    saga_log_enabled: bool
    saga_ttl_s: float
    saga_log_max_bytes: int
    saga_state_max_bytes: int
    chat_results_max_bytes: int
    actor_concurrency: int
    max_ack_pending: int
    ack_wait_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    api_timeout_s: float
    stall_after_s: float
    sweep_interval_s: float
    max_sweeps: int
    # How long past a wait's deadline the sweeper fires its timer itself (the schedule was lost or late).
    wait_grace_s: float
