"""Configuration of every supportmesh process, from environment variables (prefix `SUPPORTMESH_`).

One settings object for all processes keeps the names in one place: the local runner, the k8s manifests
and the tests all set the same variables.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# LiteLLM reaches for the internet at import unless told otherwise; every process sets these early.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The local, deterministic model registered with LiteLLM (actors/local_model.py): no key, no network.
LOCAL_LLM_MODEL = "supportmesh-local/deterministic"
MIB = 1024 * 1024


class Settings(BaseSettings):
    """Settings shared by the gateway, the actors, the mock APIs and the local runner."""

    model_config = SettingsConfigDict(env_prefix="SUPPORTMESH_", extra="ignore")

    # transport and state
    # One server, or the seed URLs of a cluster, comma-separated: clients connect to any and fail over to the
    # others (reconnecting forever).
    nats_url: str = "nats://127.0.0.1:4222"
    # Replicas of every stream and KV bucket (3 on a 3-node JetStream cluster; at most the number of nodes).
    # Applied on start to existing ones too (JetStream scales a stream's replicas in place).
    nats_replicas: int = Field(default=1, ge=1, le=5)
    # How long a JetStream write (a publish, a KV write) is retried while the bus cannot take it (a stream
    # leader being elected, a node restarting) before the step or the request fails (the gateway: 503).
    nats_retry_s: float = Field(default=20.0, ge=0)
    stream_name: str = "SUPPORT"
    stream_max_age_s: float = 24 * 3600
    duplicate_window_s: float = 120.0
    saga_ttl_s: float = 7 * 24 * 3600
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Credentials (files, so that Kubernetes mounts them from Secrets and nothing secret sits in the environment):
    # the process's NATS user, the nkey seed file it signs in with (empty: no credentials, for a server without
    # authorization) and its Redis ACL user and password file (see supportmesh/natsauth.py, redisauth.py).
    nats_user: str = ""
    nats_credentials: str = ""
    redis_username: str = ""
    redis_password_file: str = ""
    session_ttl_s: int = 24 * 3600
    sqlite_path: str = ".supportmesh/history.db"
    # Storage limits (bytes) of every JetStream bucket and stream: a full one refuses writes (the gateway
    # answers 503) instead of filling the volume. The defaults add up to 1.44 GiB, ~72 % of the 2 Gi NATS
    # volume in k8s, leaving room for JetStream's own files and compaction; alerts fire at 80 % of each.
    saga_log_max_bytes: int = Field(default=768 * MIB, ge=-1)
    saga_state_max_bytes: int = Field(default=64 * MIB, ge=-1)
    chat_results_max_bytes: int = Field(default=256 * MIB, ge=-1)
    stream_max_bytes: int = Field(default=256 * MIB, ge=-1)
    deadletter_max_bytes: int = Field(default=64 * MIB, ge=-1)
    # The durable timers of waits (saga/waits.py): when full, the oldest are dropped and the sweeper fires them.
    timers_max_bytes: int = Field(default=64 * MIB, ge=-1)
    # Conversation history (SQLite) older than this is deleted, in batches, every `history_prune_interval_s`
    # by the response aggregator (the process that writes it). 0 keeps everything.
    history_retention_days: float = Field(default=90, ge=0)
    history_prune_interval_s: float = Field(default=3600, gt=0)
    history_prune_batch: int = Field(default=1000, gt=0)

    # mock commerce APIs (one process serves all three by default)
    customers_api_url: str = "http://127.0.0.1:8100"
    orders_api_url: str = "http://127.0.0.1:8100"
    tracking_api_url: str = "http://127.0.0.1:8100"
    api_timeout_s: float = 2.0

    # LLM (any LiteLLM model name; the default needs no key and no network)
    llm_model: str = LOCAL_LLM_MODEL
    llm_fallback_model: str = LOCAL_LLM_MODEL
    llm_timeout_s: float = 20.0
    llm_retries: int = 1
    llm_log_content: bool = False
    llm_api_base: str = ""
    # Below this intent confidence the decision router hands the message to a human.
    min_intent_confidence: float = 0.6

    # Waits for a person. Every side effect waits for the customer's explicit yes (`needs_confirmation`); a plan
    # that needs a colleague waits for an agent's decision in the console (`pending_approval`). Past its deadline
    # a confirmation lapses (nothing is done) and an approval is escalated (nothing is done, a ticket is opened).
    confirm_actions: bool = True
    confirmation_timeout_s: float = Field(default=900.0, gt=0, le=7 * 24 * 3600)
    approval_timeout_s: float = Field(default=14400.0, gt=0, le=30 * 24 * 3600)

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
    # A waiting saga (a step waits for a signal or its durable timer) is never stalled; once its deadline is
    # `wait_grace_s` past with no wake recorded (its JetStream schedule was lost), the sweeper fires the timer.
    wait_grace_s: float = Field(default=10.0, gt=0)
    max_ack_pending: int = 256
    # The actor registry of a deployment with actors of its own (`module:attribute`, see actors/registry.py);
    # empty: the built-in one. Every process of the mesh must see the same value.
    actor_registry: str = ""
    # Benchmarks only: False skips every saga-log write, and with it memoization and recovery.
    saga_log_enabled: bool = True

    # gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    chat_deadline_s: float = 10.0
    jaeger_ui_url: str = "http://127.0.0.1:16686"
    # Where the widget's files are (default: the repository's web/ folder; the container image sets it).
    web_dir: str = ""
    # Identity: HS256 key of the customer tokens (`Authorization: Bearer <JWT>`, `sub` = the customer's email).
    # Unset, the gateway verifies no token (every chat is a guest chat); `supportmesh up` generates one.
    auth_secret: str = Field(default="", repr=False)
    # Clock skew tolerated on `exp` / `iat`.
    auth_leeway_s: float = Field(default=30.0, ge=0, le=300)
    # `POST /api/demo/sign-in`: mints a token for a seeded demo customer (local demo only; `supportmesh up` turns
    # it on, the Kubernetes base does not). Lifetime of those tokens.
    demo_sign_in: bool = False
    demo_token_ttl_s: int = Field(default=3600, gt=0, le=24 * 3600)
    # `/docs` and `/openapi.json` (off unless configured; `make run` turns them on).
    api_docs: bool = False
    # Rate limits (gateway/ratelimit.py), kept in Redis so every gateway shares them; `limits` notation
    # ("20/minute", "3/2second", "100/hour;1000/day"). POST /api/chat (each starts a saga) per client address
    # and per customer; the reads (outcome, saga, history, events) per client address.
    rate_limit_chat_address: str = "60/minute"
    rate_limit_chat_customer: str = "20/minute"
    rate_limit_reads: str = "600/minute"
    # Open event streams (GET /api/chat/{id}/events) at once per customer (per address for guests).
    max_streams_per_customer: int = Field(default=5, ge=1)
    # Peers (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed; nobody's by default.
    trusted_proxies: str = ""
    # Origins of the shops' pages that embed the widget (`https://shop.example`, comma-separated): the browser
    # lets their pages call the API (CORS) and frame the gateway's pages (`frame-ancestors`). Empty: the
    # gateway's own origin only. Never `*` (see `parse_origins`).
    allowed_origins: str = ""

    # observability: every process serves /metrics (actors on this port; 0 = pick a free one)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    service_name: str = Field(default="supportmesh")

    @field_validator("rate_limit_chat_address", "rate_limit_chat_customer", "rate_limit_reads")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)  # ValueError on a malformed limit: refused at start, not at the first request
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        import ipaddress

        for part in filter(None, (p.strip() for p in value.split(","))):
            ipaddress.ip_network(part, strict=False)
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        return ",".join(parse_origins(value))  # ValueError on anything but exact origins: refused at start

    @model_validator(mode="after")
    def _waits_end_before_the_log_forgets_them(self) -> Settings:
        # A wait outliving the saga log's retention would never resume: its record and its state expire first.
        for name in ("confirmation_timeout_s", "approval_timeout_s"):
            if getattr(self, name) >= self.saga_ttl_s:
                raise ValueError(f"{name} ({getattr(self, name):g} s) must be shorter than saga_ttl_s "
                                 f"({self.saga_ttl_s:g} s), or the saga log forgets the wait before it ends")
        return self

    @property
    def redis_dsn(self) -> str:
        """The Redis URL to connect with: `redis_url` with the ACL user and its password, when configured."""
        if not self.redis_password_file:
            return self.redis_url
        from pathlib import Path
        from urllib.parse import quote, urlsplit, urlunsplit

        password = Path(self.redis_password_file).read_text().strip()
        url = urlsplit(self.redis_url)
        netloc = f"{quote(self.redis_username, safe='')}:{quote(password, safe='')}@{url.hostname}:{url.port or 6379}"
        return urlunsplit(url._replace(netloc=netloc))

    @property
    def allowed_origin_list(self) -> list[str]:
        """`allowed_origins` as a list of exact origins (empty: same origin only)."""
        return parse_origins(self.allowed_origins)


DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origins(value: str) -> list[str]:
    """The comma-separated origins of `value`, each `scheme://host[:port]` as a browser sends it in `Origin`
    (lower case, no default port); ValueError for anything else.

    A wildcard is refused: the widget sends the customer's token in `Authorization`, so any site on an allow-all
    list could drive the API with a signed-in customer's token that reached it (a leaked or pasted one), and
    read the answers; every site that embeds the widget is named instead."""
    from urllib.parse import urlsplit

    origins: list[str] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if "*" in part:
            raise ValueError(f"SUPPORTMESH_ALLOWED_ORIGINS: no wildcard ({part!r}); name each shop's origin, e.g. "
                             "https://shop.example (the widget sends customers' tokens: any site could use them)")
        url = urlsplit(part)
        try:
            port = url.port
        except ValueError:
            port = -1
        if (url.scheme.lower() not in DEFAULT_PORTS or not url.hostname or url.path or url.query or url.fragment
                or url.username or url.password or port == -1 or "?" in part or "#" in part):
            raise ValueError(f"SUPPORTMESH_ALLOWED_ORIGINS: {part!r} is not an origin: scheme://host[:port], "
                             "http or https, no path (e.g. https://shop.example)")
        scheme = url.scheme.lower()
        host = url.netloc.rsplit("@", 1)[-1].lower()
        if port is not None:
            host = host.rsplit(":", 1)[0]
            if port != DEFAULT_PORTS[scheme]:
                host = f"{host}:{port}"
        if f"{scheme}://{host}" not in origins:
            origins.append(f"{scheme}://{host}")
    return origins


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
