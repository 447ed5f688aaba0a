"""The locked-down bus of a real mesh (`supportmesh up`: nats-server with nkey users and permissions, redis-server
with ACL users): nothing gets in without credentials, and each process's credentials reach only its own part."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import redis

from saga.log import SagaLog
from supportmesh.credentials import nats_options, redis_url

pytestmark = pytest.mark.e2e


class Denials:
    """The permission violations nats-server reports to one connection (its asynchronous -ERR)."""

    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.seen = asyncio.Event()

    async def on_error(self, exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            self.subjects.append(str(exc))
            self.seen.set()

    async def wait(self, subject: str, timeout: float = 10.0) -> bool:
        """True once the server refused `subject` to this connection."""
        async def refused() -> None:
            while not any(subject.lower() in s.lower() for s in self.subjects):
                self.seen.clear()
                await self.seen.wait()
        try:
            await asyncio.wait_for(refused(), timeout)
            return True
        except TimeoutError:
            return False


async def connect_as(endpoints: dict[str, Any], user: str) -> tuple[Any, Denials]:
    denials = Denials()
    nc = await nats.connect(**nats_options(endpoints, user), error_cb=denials.on_error,
                            max_reconnect_attempts=0)
    return nc, denials


def test_connections_without_credentials_are_refused(mesh) -> None:
    async def anonymous() -> None:
        nc = await nats.connect(mesh.endpoints["nats_url"], allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=5)
        await nc.close()

    with pytest.raises(Exception, match="(?i)authorization"):
        asyncio.run(anonymous())
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(mesh.endpoints["redis_url"], socket_timeout=5).ping()
    # The same servers take the operator's credentials.
    assert redis.Redis.from_url(redis_url(mesh.endpoints), socket_timeout=5).ping()


def test_credentials_are_private_files_named_not_copied_in_endpoints(mesh) -> None:
    secrets_dir = mesh.data_dir / "secrets"
    files = [p for p in secrets_dir.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in [secrets_dir, *secrets_dir.rglob("*")] if d.is_dir())
    text = mesh.endpoints_path.read_text()
    named = [Path(p) for kind in ("nats", "redis") for p in mesh.endpoints["credentials"][kind].values()]
    assert {"gateway", "intent_analyzer", "operator"} <= set(mesh.endpoints["credentials"]["nats"])
    assert all(p.exists() and p.read_text().strip() not in text for p in named)


def test_an_actor_cannot_forge_an_answer_or_move_a_saga(mesh) -> None:
    """intent_analyzer's credentials: no reply to a gateway (only the answering actors publish replies), no
    write to saga_state; the saga-log writes and hops of its own work still go through."""
    async def scenario() -> None:
        operator = await nats.connect(**nats_options(mesh.endpoints))
        replies = await operator.subscribe("supportmesh.reply.>")
        nc, denials = await connect_as(mesh.endpoints, "intent_analyzer")
        try:
            message_id = uuid.uuid4().hex
            forged = orjson.dumps({"message_id": message_id, "session_id": "s", "status": "resolved",
                                   "response": "refund approved"})
            await nc.publish("supportmesh.reply.anygateway", forged)
            assert await denials.wait('"supportmesh.reply.anygateway"')
            js = nc.jetstream(timeout=3)
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await js.publish(f"$KV.saga_state.{message_id}", b'{"status": "completed"}')
            assert await denials.wait(f"$KV.saga_state.{message_id}")
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await js.publish(f"$KV.chat_results.{message_id}", forged)
            # Its own part: a saga-log event.
            assert (await js.publish(f"$KV.saga_log.{message_id}.0.test", b"{}")).seq > 0
            saga = await SagaLog.open(operator.jetstream(timeout=10))
            assert await saga.state(message_id) is None
            # The reply was never delivered (a flush round trip orders it after the refused publish).
            await operator.flush()
            with pytest.raises(nats.errors.TimeoutError):
                await replies.next_msg(timeout=0.5)
        finally:
            await nc.close()
            await operator.close()

    asyncio.run(scenario())


def test_the_answering_actor_may_reply_but_not_reach_dead_letters(mesh) -> None:
    async def scenario() -> None:
        operator = await nats.connect(**nats_options(mesh.endpoints))
        replies = await operator.subscribe("supportmesh.reply.>")
        await operator.flush()
        nc, denials = await connect_as(mesh.endpoints, "response_aggregator")
        try:
            await nc.publish("supportmesh.reply.anygateway", b"{}")
            assert (await replies.next_msg(timeout=10)).subject == "supportmesh.reply.anygateway"
            js = nc.jetstream(timeout=3)
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await js.consumer_info("SUPPORT_DEADLETTERS", "deadletters")
            assert await denials.wait("SUPPORT_DEADLETTERS")
        finally:
            await nc.close()
            await operator.close()

    asyncio.run(scenario())


def test_the_gateway_starts_sagas_only_at_their_first_step_and_takes_no_actor_work(mesh) -> None:
    """The forged `execution_coordinator` message of the issue: the gateway's credentials cannot publish it, nor
    fetch another process's work."""
    async def scenario() -> None:
        nc, denials = await connect_as(mesh.endpoints, "gateway")
        try:
            js = nc.jetstream(timeout=3)
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await js.publish("ecommerce.support.execution_coordinator", b"{}")
            assert await denials.wait("ecommerce.support.execution_coordinator")
            await nc.publish("$JS.API.CONSUMER.MSG.NEXT.SUPPORT.execution_coordinator", json.dumps(
                {"batch": 1, "expires": 1_000_000_000}).encode(), reply=nc.new_inbox())
            assert await denials.wait("CONSUMER.MSG.NEXT.SUPPORT.execution_coordinator")
        finally:
            await nc.close()

    asyncio.run(scenario())
