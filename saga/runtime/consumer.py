"""The runtime of one actor: connect, bind its durable consumer, pull deliveries (`saga.runtime.pull`: pull
requests kept open for the free slots, not a request per message) and run each as a step
(`saga.runtime.step`), export its backlog, and stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from saga import transport, waits
from saga.actor import Actor
from saga.app import SagaApp
from saga.hooks import NoHooks, StepHooks
from saga.log import SagaLog
from saga.retry import RetryPolicy
from saga.runtime import failures
from saga.runtime.core import Core
from saga.runtime.pull import CreditPull
from saga.runtime.step import run_step

log = logging.getLogger("saga.runtime")


class Runtime:
    """Runs one actor: its consumer, its saga bookkeeping, its retries."""

    def __init__(
        self,
        actor: Actor,
        settings: Any,
        app: SagaApp,
        *,
        hooks: StepHooks | None = None,
        concurrency: int | None = None,
        ack_wait_s: float | None = None,
        policy: RetryPolicy | None = None,
        fetch_timeout_s: float = 1.0,
        drain_timeout_s: float | None = None,
    ) -> None:
        ack_wait = ack_wait_s or actor.ack_wait_s or settings.ack_wait_s
        self.core = Core(actor=actor, app=app, settings=settings, hooks=hooks or NoHooks(), ack_wait_s=ack_wait,
                         policy=policy or RetryPolicy(max_attempts=actor.max_attempts or settings.max_attempts,
                                                      base_s=settings.backoff_base_s, max_s=settings.backoff_max_s))
        self.actor = actor
        self.name = actor.name
        self.settings = settings
        self.subject = app.subject_for(self.name)
        self.concurrency = concurrency or settings.actor_concurrency
        # How long one pull request waits on the server: when idle, one request per this interval.
        self.fetch_timeout_s = fetch_timeout_s
        # How long `stop` waits for steps in flight (the wiring sizes it like the pod's grace period).
        self.drain_timeout_s = drain_timeout_s if drain_timeout_s is not None else 2 * ack_wait
        self._pull: CreditPull | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self.ready = False

    # Shared with recovery and tests.
    @property
    def nc(self) -> Any:
        """The NATS connection."""
        return self.core.nc

    @property
    def js(self) -> Any:
        """The JetStream context."""
        return self.core.js

    @property
    def saga(self) -> SagaLog:
        """The saga log."""
        return self.core.saga

    @property
    def results(self) -> Any:
        """The results store."""
        return self.core.results

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare the stream and this actor's consumer, start the actor and the pull loop."""
        core, settings = self.core, self.settings
        core.nc = await transport.connect(settings, f"supportmesh-{self.name}", max_reconnect_attempts=-1,
                                          reconnect_time_wait=0.25, connect_timeout=5)
        core.js = transport.jetstream(core.nc, settings, timeout=10)
        await transport.ensure_stream(core.js, settings, core.app.subject_prefix)
        core.saga = await SagaLog.open(core.js, ttl_s=settings.saga_ttl_s, log_max_bytes=settings.saga_log_max_bytes,
                                       state_max_bytes=settings.saga_state_max_bytes,
                                       replicas=settings.nats_replicas, on_recorded=core.hooks.on_saga_event)
        core.results = await core.app.result_store.open(core.js, ttl_s=settings.saga_ttl_s,
                                                        max_bytes=settings.chat_results_max_bytes,
                                                        replicas=settings.nats_replicas)
        await self.actor.start(settings)
        await self._bind()
        self._loop_task = asyncio.create_task(self._pull_loop(), name=f"{self.name}-pull")
        self._backlog_task = asyncio.create_task(self._backlog_loop(), name=f"{self.name}-backlog")
        core.hooks.on_started(self.name)
        self.ready = True
        log.info("actor started", extra={"actor": self.name})

    async def _bind(self) -> None:
        config = transport.consumer_config(
            self.name,
            subject=self.subject,
            ack_wait_s=self.core.ack_wait_s,
            # One delivery more than the retry budget: if the last attempt's process dies, JetStream still
            # gives up (MAX_DELIVERIES advisory) instead of looping.
            max_deliver=self.core.policy.max_attempts + 1,
            max_ack_pending=self.settings.max_ack_pending,
            resume_subject=waits.resume_subject(self.core.app.subject_prefix, self.name),
        )
        await transport.ensure_consumer(self.js, self.settings, config)
        if self._pull is None:
            self._pull = CreditPull(self.nc, self.js._prefix, self.settings.stream_name, self.name,
                                    deliver=self._deliver, expires_s=self.fetch_timeout_s)
            await self._pull.start()
        else:
            self._pull.forget()

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Graceful stop: no new pull requests, finish in-flight steps (waiting up to `drain_timeout_s`, by
        default the longest step this actor can take) while the open requests expire, close the actor and
        the connection."""
        self.ready = False
        self._stopping.set()
        if self._pull is not None:
            self._pull.wake.set()
        if self._backlog_task:
            self._backlog_task.cancel()
        if self._loop_task:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(self.fetch_timeout_s + 2):
                    await self._loop_task
        drain = self.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        deadline = time.monotonic() + drain
        await self._expire_requests(drain)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            await self.actor.stop()
        # In-flight steps are done, so flush and close; nats-py's drain() waits out its full timeout on
        # subscriptions.
        if self._pull is not None:
            await self._pull.close()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.nc.close()
        log.info("actor stopped", extra={"actor": self.name})

    async def run_until_stopped(self, on_started: Callable[[], None] | None = None) -> None:
        """Start, call `on_started` (when given), then wait until `request_stop()` (e.g. on SIGTERM), then stop
        gracefully."""
        await self.start()
        if on_started is not None:
            on_started()
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        """Ask `run_until_stopped` to stop (signal-handler safe)."""
        self._stopping.set()

    # ---- pulling ----------------------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        """Keep a pull request open for the free slots; bind again when the server says the consumer is gone."""
        pull = self._pull
        assert pull is not None
        while not self._stopping.is_set():
            if pull.rebind.is_set():
                await asyncio.sleep(0.5)
                try:
                    await self._bind()
                    pull.rebind.clear()
                except Exception as exc:  # JetStream not back yet: try again
                    log.warning("binding the consumer failed: %s", exc, extra={"actor": self.name})
                continue
            pull.wake.clear()
            try:
                await pull.ask(self.concurrency - len(self._tasks))
            except Exception as exc:  # disconnected: nats-py queues or refuses; try again shortly
                log.warning("pull request failed: %s", exc, extra={"actor": self.name})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pull.next_deadline()):
                    await pull.wake.wait()

    def _deliver(self, msg: Msg) -> None:
        # Also while stopping: the message was asked for before, and the stop drains it like any other.
        task = asyncio.create_task(self._process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pull is not None:
            self._pull.wake.set()

    async def _expire_requests(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) until the open pull requests have expired, so nothing is on its way when
        the subscription goes (messages they bring are run, and drained with the rest)."""
        pull = self._pull
        deadline = time.monotonic() + timeout_s
        while pull is not None and pull.open_requests and time.monotonic() < deadline:
            pull.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(pull.next_deadline(), max(0.0, deadline - time.monotonic()))):
                    await pull.wake.wait()
            pull.drop_expired()

    # ---- one delivery -----------------------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        outcome = "error"
        self.core.hooks.on_step_start(self.name)
        try:
            outcome = await self._delivery(msg, time.perf_counter())
        except Exception:
            # Infrastructure trouble (NATS down mid-step): leave the message un-acked; JetStream redelivers
            # it after ack_wait and memoization makes the retry cheap.
            log.exception("step aborted; JetStream will redeliver", extra={"actor": self.name})
        finally:
            self.core.hooks.on_step_outcome(self.name, outcome)

    async def _delivery(self, msg: Msg, started: float) -> str:
        """Parse the delivery (a malformed one is poison), then run it as a step inside its span."""
        core, attempt = self.core, msg.metadata.num_delivered
        try:
            message = core.app.message_type.from_bytes(msg.data)
        except Exception as exc:
            try:
                await failures.poison(core, msg, exc)
            finally:
                core.hooks.on_step_end(self.name, time.perf_counter() - started)
            return "poison"
        headers = dict(msg.headers or {})
        # A resumed step links to the span of the step that waited (a wait may outlive its trace).
        link = headers.get(waits.LINK_HEADER)
        with core.hooks.step_span(self.name, self.subject, message, transport.msg_id(message), attempt, headers,
                                  links=[{"traceparent": link}] if link else None):
            try:
                return await run_step(core, msg, message, attempt)
            finally:
                # Inside the span: the observation's exemplar carries the step's trace id.
                core.hooks.on_step_end(self.name, time.perf_counter() - started)

    async def _backlog_loop(self, interval_s: float = 5.0) -> None:
        """Export the consumer's backlog (pending and ack-pending) for the dashboards and autoscalers."""
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.settings.stream_name, self.name)
                self.core.hooks.on_backlog(self.name, info.num_pending or 0, info.num_ack_pending or 0)
            await asyncio.sleep(interval_s)
