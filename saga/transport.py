"""JetStream plumbing shared by the gateway, the actors and the tools: the stream, the per-actor durable
pull consumers, and publishing a message to its current step."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from saga.log import SagaEvent, SagaLog
from saga.protocol import SUBJECT_PREFIX, Message, subject_for
from supportmesh.config import Settings

log = logging.getLogger("supportmesh.transport")


def stream_config(settings: Settings) -> StreamConfig:
    """The one stream over `ecommerce.support.>`: file storage, work-queue retention, a duplicate window."""
    return StreamConfig(
        name=settings.stream_name,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window_s,
        max_age=settings.stream_max_age_s,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream, or bring an existing one to the current configuration (idempotent)."""
    config = stream_config(settings)
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
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


def consumer_config(actor: str, *, ack_wait_s: float, max_deliver: int, max_ack_pending: int) -> ConsumerConfig:
    """The durable pull consumer of one actor; every replica of the actor fetches from it."""
    return ConsumerConfig(
        durable_name=actor,
        filter_subject=subject_for(actor),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )


async def ensure_consumer(js: JetStreamContext, settings: Settings, config: ConsumerConfig) -> None:
    """Create or update the actor's durable consumer (so a deleted consumer heals on the next call)."""
    try:
        await js.add_consumer(settings.stream_name, config)
    except BadRequestError:
        # An existing consumer with an incompatible config (e.g. another filter): replace it.
        try:
            await js.delete_consumer(settings.stream_name, config.durable_name or "")
        except NotFoundError:
            pass
        await js.add_consumer(settings.stream_name, config)


def msg_id(message: Message) -> str:
    """The dedup id of a hop: the same step published twice (after a crash) is stored once."""
    return f"{message.message_id}:{message.route.current_step}"


async def publish(js: JetStreamContext, message: Message, headers: dict[str, str] | None = None) -> int:
    """Publish a message to the actor of its current step, with a publish ack; returns the stream seq."""
    hdrs = dict(headers or {})
    hdrs["Nats-Msg-Id"] = msg_id(message)
    ack = await js.publish(subject_for(message.route.current), message.to_bytes(), headers=hdrs)
    return ack.seq


async def record_start(saga: SagaLog, message: Message) -> None:
    """Record `saga_started` and mark the saga running, concurrently (two independent KV writes)."""
    await asyncio.gather(
        saga.record(
            SagaEvent(
                message_id=message.message_id,
                kind="saga_started",
                actor="gateway",
                step_index=message.route.current_step,
                trace_id=message.metadata.trace_id,
                # The whole first message: recovery replays the recorded step results on it.
                data={"route": message.route.steps, "session_id": message.session_id,
                      "message": message.model_dump(mode="json")},
            )
        ),
        saga.set_state(
            message.message_id,
            status="running",
            step_index=message.route.current_step,
            actor=message.route.current,
            session_id=message.session_id,
            trace_id=message.metadata.trace_id,
        ),
    )


async def start_saga(
    js: JetStreamContext, saga: SagaLog, message: Message, headers: dict[str, str] | None = None
) -> int:
    """Record the saga's start, then publish its first step (what the gateway does). The start is stored
    before the first step can run, so the saga log always begins with `saga_started`."""
    await record_start(saga, message)
    return await publish(js, message, headers)
