"""The gateway's process state: its NATS connection, JetStream stores, reply router and session/history stores,
opened once at startup and closed at shutdown."""

from __future__ import annotations

import contextlib
from typing import Any

import nats.errors

from actors.domain import SUBJECT_PREFIX
from actors.results import ResultStore
from config.settings import Settings
from gateway.replies import ReplyRouter
from observability import metrics
from saga.log import SagaLog
from saga.transport import connect, ensure_stream, jetstream

# How long a JetStream request (a KV read, a publish ack) may take before the gateway gives up on it: a read
# then answers 503 with Retry-After, a start that cannot be recorded 503 (nothing started).
STORE_TIMEOUT_S = 5.0

class Gateway:
    """The gateway's connections and stores, opened once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nc: Any = None
        self.js: Any = None
        self.saga: SagaLog
        self.results: ResultStore
        self.replies: ReplyRouter
        self.sessions: Any = None
        self.history: Any = None

    async def start(self) -> None:
        """Connect to NATS, Redis and SQLite; declare the stream and buckets; listen for replies."""
        s = self.settings
        self.nc = await connect(s, "supportmesh-gateway", max_reconnect_attempts=-1, reconnect_time_wait=0.25)
        self.js = jetstream(self.nc, s, timeout=STORE_TIMEOUT_S)
        await ensure_stream(self.js, s, SUBJECT_PREFIX)
        self.saga = await SagaLog.open(self.js, ttl_s=s.saga_ttl_s, read_timeout_s=STORE_TIMEOUT_S,
                                       log_max_bytes=s.saga_log_max_bytes, state_max_bytes=s.saga_state_max_bytes,
                                       replicas=s.nats_replicas, on_recorded=metrics.count_saga_event)
        self.results = await ResultStore.open(self.js, ttl_s=s.saga_ttl_s, max_bytes=s.chat_results_max_bytes,
                                              replicas=s.nats_replicas)
        self.replies = ReplyRouter(self.nc)
        await self.replies.start()
        from actors.history import HistoryStore
        from actors.sessions import SessionStore

        self.sessions = SessionStore(s.redis_dsn, ttl_s=s.session_ttl_s)
        self.history = HistoryStore(s.sqlite_path)
        await self.history.open()

    def require_nats(self) -> None:
        """Fail fast while the NATS connection is down: a read would otherwise wait out its timeout before the
        503 it is bound to get (nats-py buffers requests while it reconnects)."""
        if self.nc is None or not self.nc.is_connected:
            raise nats.errors.ConnectionReconnectingError

    async def stop(self) -> None:
        """Close everything opened by `start`."""
        with contextlib.suppress(Exception):
            await self.replies.stop()
        if self.history is not None:
            with contextlib.suppress(Exception):
                await self.history.close()
        if self.sessions is not None:
            with contextlib.suppress(Exception):
                await self.sessions.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

