"""JetStream plumbing shared by the application's front end, its actors and tools: the work stream (and the
stream of the timers of waits), the per-actor durable pull consumers, and publishing a message to its current
step."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
)

from opentelemetry import propagate

from saga import waits
from saga.jetstream import RetryingJetStream, servers
from saga.jetstream import jetstream as retrying_jetstream
from saga.log import SagaEvent, SagaLog
from saga.protocol import Message
from saga.settings import SagaSettings as Settings

log = logging.getLogger("saga.transport")

# The W3C trace context headers (kept with `saga_started`, so that recovery continues the saga's trace).
TRACE_HEADERS = ("traceparent", "tracestate")


def inbox_prefix(user: str) -> str:
    """The inbox prefix of a NATS user's connection: its request replies arrive under it, and its permissions
    let it read no other (supportmesh/natsauth.py)."""
    return f"_INBOX_{user}"


async def connect(settings: Settings, name: str, **options: Any) -> NATS:
    """Connect to NATS as this process's user: signed in with its nkey seed (`nats_credentials`) and receiving
    its request replies under its own inbox prefix (the only inbox its permissions let it read). Without
    credentials it connects anonymously, which only a server without authorization accepts (unit tests).

    `nats_url` may name a cluster's seed URLs (comma-separated): the client starts with any of them, learns the
    others from the cluster, and moves to another node when its own goes down."""
    auth: dict[str, Any] = {}
    if settings.nats_credentials:
        auth["nkeys_seed"] = settings.nats_credentials
    if settings.nats_user:
        auth["inbox_prefix"] = inbox_prefix(settings.nats_user)
    return await nats.connect(servers=servers(settings.nats_url), name=name, **auth, **options)


def jetstream(nc: NATS, settings: Settings, timeout: float) -> RetryingJetStream:
    """The JetStream context of a process: its writes retry a bus that briefly cannot take them (a leader
    election, a restarting server) for up to `nats_retry_s` (saga/jetstream.py)."""
    return retrying_jetstream(nc, timeout=timeout, retry_s=settings.nats_retry_s)


def stream_config(settings: Settings, subject_prefix: str) -> StreamConfig:
    """The one stream over `<subject_prefix>.>`: file storage, work-queue retention, a duplicate window, a size
    limit that refuses new messages when reached (discard new: dropping old ones would lose sagas in flight).
    It sources the fired timers of waits from the timer stream (`timer_stream_config`), each moved to the
    subject of the actor that waits (`saga_fired.<prefix>.<actor>` → `<prefix>.<actor>`)."""
    return StreamConfig(
        name=settings.stream_name,
        subjects=[f"{subject_prefix}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window_s,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        discard=DiscardPolicy.NEW,
        num_replicas=settings.nats_replicas,
        sources=[StreamSource(name=timer_stream_name(settings), subject_transforms=[
            SubjectTransform(src=f"{waits.FIRED_TOKEN}.{subject_prefix}.>", dest=f"{subject_prefix}.>")])],
    )


def timer_stream_name(settings: Settings) -> str:
    """The stream of the durable timers of waits (`saga.waits`)."""
    return f"{settings.stream_name}_TIMERS"


def timer_stream_config(settings: Settings, subject_prefix: str) -> StreamConfig:
    """The durable timers of waits: JetStream per-message schedules on `saga_timer.<prefix>.>` that fire onto
    `saga_fired.<prefix>.<actor>`, from where the work stream sources them. A stream of its own because
    JetStream refuses schedules in a stream that discards new messages when full, as the work stream must.
    Schedules carry `Nats-TTL: never` (the max age would delete one due later); fired copies age out. When
    full it drops its oldest messages: a lost schedule is fired by the recovery sweeper after its grace."""
    return StreamConfig(
        name=timer_stream_name(settings),
        subjects=[f"{waits.TIMER_TOKEN}.{subject_prefix}.>", f"{waits.FIRED_TOKEN}.{subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window_s,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.timers_max_bytes,
        discard=DiscardPolicy.OLD,
        allow_msg_schedules=True,
        allow_msg_ttl=True,
        num_replicas=settings.nats_replicas,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings, subject_prefix: str) -> None:
    """Create the timer stream and the work stream, or bring existing ones to the current configuration
    (idempotent)."""
    await declare_stream(js, timer_stream_config(settings, subject_prefix))
    await declare_stream(js, stream_config(settings, subject_prefix))


async def declare_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create a stream, or bring an existing one to `config` (its limits, its replicas: JetStream scales an
    existing stream's replicas in place when the cluster has the nodes)."""
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


def deadletter_stream_name(settings: Settings) -> str:
    """The stream that keeps JetStream's delivery-failure advisories (NATS does not store them itself)."""
    return f"{settings.stream_name}_DEADLETTERS"


async def ensure_deadletter_stream(js: JetStreamContext, settings: Settings) -> None:
    """Capture MAX_DELIVERIES and MSG_TERMINATED advisories of our stream in a stream of their own."""
    config = StreamConfig(
        name=deadletter_stream_name(settings),
        subjects=[
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{settings.stream_name}.*",
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{settings.stream_name}.*",
        ],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=settings.saga_ttl_s,
        max_bytes=settings.deadletter_max_bytes,
        discard=DiscardPolicy.NEW,
        num_replicas=settings.nats_replicas,
    )
    await declare_stream(js, config)


def storage_streams(settings: Settings, buckets: tuple[str, ...]) -> list[str]:
    """Every stream the mesh stores data in: the work stream, the dead letters and the KV buckets' streams."""
    return [settings.stream_name, timer_stream_name(settings), deadletter_stream_name(settings),
            *(f"KV_{bucket}" for bucket in buckets)]


def consumer_config(actor: str, *, subject: str, ack_wait_s: float, max_deliver: int, max_ack_pending: int,
                    resume_subject: str | None = None) -> ConsumerConfig:
    """The durable pull consumer of one actor; every replica of the actor fetches from it. With
    `resume_subject`, it also takes the resumes of the actor's waits (`saga.waits.resume_subject`)."""
    return ConsumerConfig(
        durable_name=actor,
        filter_subject=None if resume_subject else subject,
        filter_subjects=[subject, resume_subject] if resume_subject else None,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )


# JetStream's answers to an update of a consumer that does not exist (yet, or any more).
_CONSUMER_MISSING = frozenset({10014, 10149})


async def update_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Change an existing durable consumer in place (JetStream API `action: update`), keeping its delivery
    state: pending acks and delivery counts. Raises an APIError when the consumer does not exist or the
    server refuses the change (e.g. a new deliver policy). nats-py 2.16 has no call for it."""
    name = config.durable_name or ""
    request = {"stream_name": stream, "config": config.as_dict(), "action": "update"}
    await js._api_request(f"{js._prefix}.CONSUMER.CREATE.{stream}.{name}", json.dumps(request).encode(),
                          timeout=js._timeout)


async def ensure_consumer(js: JetStreamContext, settings: Settings, config: ConsumerConfig) -> None:
    """Bring the actor's durable consumer to `config`: updated in place when it exists (two replicas started
    with different settings, e.g. during a rolling deploy, then never delete each other's consumer and its
    delivery counts), created when it is missing (so a deleted consumer heals on the next call), and deleted
    and recreated only when the server refuses the update."""
    stream, name = settings.stream_name, config.durable_name or ""
    try:
        await update_consumer(js, stream, config)
        return
    except ServiceUnavailableError:
        raise  # JetStream is not ready: nothing was refused, try again later
    except APIError as exc:
        refused: APIError | None = None if exc.err_code in _CONSUMER_MISSING else exc
    if refused is None:
        try:
            # Create, or update if another replica created it in the meantime.
            await js.add_consumer(stream, config)
            return
        except ServiceUnavailableError:
            raise
        except APIError as exc:
            refused = exc
    log.warning("consumer %s: the server refused to update it (%s); replacing it", name, refused)
    try:
        await js.delete_consumer(stream, name)
    except NotFoundError:
        pass
    await js.add_consumer(stream, config)


def msg_id(message: Message, resume: int = 0) -> str:
    """The dedup id of a hop: the same step published twice (after a crash) is stored once.

    A resumption by recovery (`resume` > 0, the sweeper's n-th) has an id of its own: it must not be
    dropped as a duplicate of the hop it replaces, which may still be inside the duplicate window. Should
    the original still be in flight, the step runs once anyway (the second delivery is memoized)."""
    base = f"{message.message_id}:{message.route.current_step}"
    return f"{base}:s{resume}" if resume else base


async def publish(
    js: JetStreamContext, message: Message, headers: dict[str, str] | None = None, *, resume: int = 0
) -> int:
    """Publish a message to the actor of its current step, with a publish ack; returns the stream seq."""
    hdrs = dict(headers or {})
    hdrs["Nats-Msg-Id"] = msg_id(message, resume)
    ack = await js.publish(message.subject_for(message.route.current), message.to_bytes(), headers=hdrs)
    return ack.seq


async def record_start(saga: SagaLog, message: Message) -> bool:
    """Record `saga_started` and put the saga in the running index with its starting state, concurrently (two
    independent KV writes; the saga has no `saga_state` key until its status changes). False when
    `saga_started` was already recorded (another attempt of the same message started it first)."""
    created, _ = await asyncio.gather(
        saga.record(
            SagaEvent(
                message_id=message.message_id,
                kind="saga_started",
                actor="gateway",
                step_index=message.route.current_step,
                trace_id=message.metadata.trace_id,
                # The whole first message: recovery replays the recorded step results on it. The trace
                # context too: a resumption by recovery continues the saga's trace.
                data={"route": message.route.steps, "session_id": message.session_id,
                      "message": message.model_dump(mode="json"), **_trace_context()},
            )
        ),
        saga.start(
            message.message_id,
            step_index=message.route.current_step,
            actor=message.route.current,
            session_id=message.session_id,
            trace_id=message.metadata.trace_id,
            owner=message.owner,
            started_at=message.metadata.created_at,
        ),
    )
    if not created:  # a repeated start: a finished saga must not stay in the index the start put it back in
        await saga.unindex_if_ended(message.message_id)
    return bool(created)


def _trace_context() -> dict[str, str]:
    """The current W3C trace context (`traceparent`, `tracestate`), when there is one."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}


async def start_saga(
    js: JetStreamContext, saga: SagaLog, message: Message, headers: dict[str, str] | None = None
) -> int:
    """Record the saga's start, then publish its first step (what the gateway does). The start is stored
    before the first step can run, so the saga log always begins with `saga_started`."""
    await record_start(saga, message)
    return await publish(js, message, headers)
