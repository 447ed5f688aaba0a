"""A real nats-server plus helpers to run actors in this process or in their own OS processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ConsumerInfo
from opentelemetry import context as otel_context

from actors.base import Actor
from actors.domain import SUBJECT_PREFIX, Message, new_message
from actors.results import ChatResult, ResultStore
from actors.runtime import ActorRuntime
from config.settings import Settings
from observability import metrics
from saga.log import SagaEvent, SagaLog, SagaState
from saga.transport import ensure_stream, record_start, start_saga
from supportmesh.natsserver import NatsServer

from tests.support import REPO


class Harness:
    """One nats-server for one test, the saga log, and the actors the test starts."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.tmp = tmp
        self.server = NatsServer(store_dir=tmp / "jetstream")
        self.toy_log = tmp / "toy.log"
        self.overrides = settings
        self.runtimes: list[ActorRuntime] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self) -> Harness:
        self.server.start()
        defaults: dict[str, Any] = {"ack_wait_s": 2.0, "backoff_base_s": 0.2, "backoff_max_s": 1.0,
                                    "max_attempts": 3, "saga_ttl_s": 86400,
                                    "sqlite_path": str(self.tmp / "history.db")}
        self.settings = Settings(nats_url=self.server.url, **{**defaults, **self.overrides})
        os.environ["SUPPORTMESH_TOY_LOG"] = str(self.toy_log)
        await self.connect()
        return self

    async def connect(self) -> None:
        self.nc = await nats.connect(self.server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.js = self.nc.jetstream(timeout=10)
        await ensure_stream(self.js, self.settings, SUBJECT_PREFIX)
        # Counted like the gateway's (the harness stands for it).
        self.saga = await SagaLog.open(self.js, ttl_s=3600, on_recorded=metrics.count_saga_event)
        self.results = await ResultStore.open(self.js, ttl_s=3600)

    async def close(self) -> None:
        for rt in self.runtimes:
            try:
                await asyncio.wait_for(rt.stop(drain_timeout_s=2), timeout=8)
            except Exception:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        try:
            await self.nc.close()
        except Exception:
            pass
        self.server.stop()
        os.environ.pop("SUPPORTMESH_TOY_LOG", None)

    # ---- actors ---------------------------------------------------------------------------------

    async def run_actor(self, cls: type[Actor], **kwargs: Any) -> ActorRuntime:
        """Run an actor in this process (in the test's event loop). The toy error handler (`catcher`) runs
        recovery too, as the real one does."""
        kwargs.setdefault("recovery", cls.name in ("catcher", "escalation_router"))
        rt = ActorRuntime(cls(), self.settings, **kwargs)
        await rt.start()
        self.runtimes.append(rt)
        return rt

    async def run_aggregator(self) -> ActorRuntime:
        """The real response aggregator (SQLite history, Redis session state, stored result, reply): the
        answering step, of failed sagas too. The harness must be given a `redis_url`."""
        from actors.response_aggregator import ResponseAggregator

        assert "redis_url" in self.overrides, "run_aggregator needs Harness(..., redis_url=...)"
        return await self.run_actor(ResponseAggregator)

    def history_rows(self, message_id: str) -> list[tuple[str, str]]:
        """(sender, content) of the SQLite history rows of one message, the customer's first."""
        with contextlib.closing(sqlite3.connect(self.settings.sqlite_path)) as db:
            rows = db.execute("SELECT sender, content FROM messages WHERE message_id IN (?, ?) ORDER BY sender DESC",
                              (message_id, f"{message_id}:agent")).fetchall()
        return [(sender, content) for sender, content in rows]

    def spawn_actor(self, spec: str, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run an actor in its own OS process (`python -m actors <spec>`), logging to the temp folder."""
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SUPPORTMESH_NATS_URL": self.server.url,
            "SUPPORTMESH_ACK_WAIT_S": str(self.settings.ack_wait_s),
            "SUPPORTMESH_BACKOFF_BASE_S": str(self.settings.backoff_base_s),
            "SUPPORTMESH_MAX_ATTEMPTS": str(self.settings.max_attempts),
            "SUPPORTMESH_TOY_LOG": str(self.toy_log),
            "SUPPORTMESH_METRICS_PORT": "0",
            **(env or {}),
        }
        log = open(self.tmp / f"actor-{spec.replace(':', '_')}-{len(self.procs)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors", spec], cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill9(proc: subprocess.Popen[bytes]) -> None:
        """kill -9 an actor process."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)

    # ---- messages -------------------------------------------------------------------------------

    async def submit(self, steps: list[str], text: str = "hello mesh", *, error_handler: str = "catcher",
                     reply_subject: str | None = None, publish: bool = True) -> Message:
        """Start a saga with the given route (as the gateway does). `publish=False` records its start but
        "loses" its first hop."""
        message = new_message(session_id="s1", customer_email="user@example.com", customer_message=text,
                              steps=steps, reply_subject=reply_subject, customer_verified=True)
        message = message.model_copy(update={"route": message.route.model_copy(update={"error_handler": error_handler})})
        if publish:
            await start_saga(self.js, self.saga, message)
        else:
            await record_start(self.saga, message)
        return message

    async def reply_inbox(self) -> tuple[str, list[ChatResult]]:
        """A core NATS subject standing for a waiting gateway, and the answers published to it."""
        subject = f"supportmesh.test.replies.{uuid.uuid4().hex}"
        got: list[ChatResult] = []

        async def collect(msg: Any) -> None:
            got.append(ChatResult.from_bytes(msg.data))

        await self.nc.subscribe(subject, cb=collect)
        return subject, got

    async def wait_terminal(self, message_id: str, timeout: float = 20.0) -> SagaState:
        """Wait until the saga is completed, escalated or failed."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = await self.saga.state(message_id)
            if state and state.status in ("completed", "escalated", "failed"):
                return state
            await asyncio.sleep(0.05)
        raise AssertionError(f"saga {message_id} not terminal after {timeout}s: {state}")

    async def events(self, message_id: str) -> list[SagaEvent]:
        """The saga's history."""
        return await self.saga.history(message_id)

    def executions(self, actor: str | None = None, message_id: str | None = None) -> list[tuple[str, str, int, int]]:
        """Handler calls recorded by the toy actors: (actor, message_id, step, attempt)."""
        if not self.toy_log.exists():
            return []
        rows = []
        for line in self.toy_log.read_text().splitlines():
            a, m, step, attempt = line.split()
            if (actor is None or a == actor) and (message_id is None or m == message_id):
                rows.append((a, m, int(step), int(attempt)))
        return rows

    async def consumer(self, actor: str) -> ConsumerInfo:
        """Consumer info of an actor (delivery counts)."""
        return await self.js.consumer_info(self.settings.stream_name, actor)


def start_mocks(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The mock commerce APIs as a real server on a free port; returns the process and its URL."""
    import httpx

    from supportmesh.natsserver import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mocks.server", "--port", str(port)], cwd=REPO,
                            stdout=open(log_dir / "mocks.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the mock APIs did not start (see {log_dir / 'mocks.log'})")


class RecordingProxy:
    """A real HTTP proxy on a free loopback port in front of `target` (the mock APIs) that records each
    request, `(method, path)`, in the order it was passed on: what the commerce API was asked, and when."""

    def __init__(self, target: str) -> None:
        import httpx

        self.requests: list[tuple[str, str]] = []
        lock = threading.Lock()
        upstream = httpx.Client(base_url=target, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                with lock:
                    proxy.requests.append((self.command, self.path))
                r = upstream.request(self.command, self.path, content=body, headers=headers)
                self.send_response(r.status_code)
                for name in ("content-type", "idempotent-replayed"):
                    if name in r.headers:
                        self.send_header(name, r.headers[name])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = _forward

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._upstream = upstream
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._upstream.close()


@contextlib.contextmanager
def in_trace() -> Iterator[str]:
    """Run the block inside a fresh W3C trace (as the gateway's request span would); yields its trace id."""
    from observability.tracing import extract_context

    trace_id = os.urandom(16).hex()
    token = otel_context.attach(extract_context({"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}))
    try:
        yield trace_id
    finally:
        otel_context.detach(token)


def kinds(events: list[SagaEvent]) -> list[tuple[str, str, int]]:
    """(kind, actor, step) of each event, for compact assertions."""
    return [(e.kind, e.actor, e.step_index) for e in events]
