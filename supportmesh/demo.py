"""`supportmesh demo`: the durable runtime on its own. Three toy actors in one process, a real nats-server in a
temporary folder; one message flows through, one fails once and is retried; the saga log of each is printed."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from actors.base import Actor, RetryableError, StepContext
from actors.domain import Message, new_message
from actors.runtime import ActorRuntime
from config.settings import Settings
from saga.log import SagaLog
from saga.transport import start_saga
from supportmesh.natsserver import NatsServer


class Shout(Actor):
    """Upper-cases the customer's words."""

    name = "demo_shout"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        return {"api_data": {**message.payload.api_data, "shout": message.payload.customer_message.upper()}}


class Flaky(Actor):
    """Fails on the first attempt when the message asks for it."""

    name = "demo_flaky"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        if "flaky" in message.payload.customer_message and ctx.attempt == 1:
            raise RetryableError("a transient failure, for the demo")
        return {"api_data": {**message.payload.api_data, "attempt": ctx.attempt}}


class Count(Actor):
    """Counts the words."""

    name = "demo_count"

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        return {"api_data": {**message.payload.api_data, "words": len(message.payload.customer_message.split())}}


async def run_demo() -> None:
    """Run the demo and print each saga's log."""
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "jetstream").start()
        try:
            settings = Settings(nats_url=server.url, backoff_base_s=0.3)
            runtimes = [ActorRuntime(cls(), settings) for cls in (Shout, Flaky, Count)]
            for rt in runtimes:
                await rt.start()
            saga = runtimes[0].saga
            route = ["demo_shout", "demo_flaky", "demo_count"]
            for text in ("where is my parcel", "a flaky step, retried once"):
                message = new_message(session_id="demo", customer_email="user@example.com",
                                      customer_message=text, steps=route)
                await start_saga(runtimes[0].js, saga, message)
                await _wait(saga, message.message_id)
                await _print(saga, message.message_id, text)
            for rt in runtimes:
                await rt.stop()
        finally:
            server.stop()


async def _wait(saga: SagaLog, message_id: str) -> None:
    for _ in range(200):
        state = await saga.state(message_id)
        if state and state.status in ("completed", "escalated", "failed"):
            return
        await asyncio.sleep(0.05)


async def _print(saga: SagaLog, message_id: str, text: str) -> None:
    events = await saga.history(message_id)
    state = await saga.state(message_id)
    print(f"\nmessage {message_id}: {text!r} -> {state.status if state else '?'}")
    t0 = events[0].ts if events else 0
    for e in events:
        extra = e.data.get("delay_s") or e.data.get("enrichment") or e.data.get("source") or ""
        print(f"  +{(e.ts - t0) * 1000:7.1f} ms  step {e.step_index}  {e.actor:<12} {e.kind:<16} "
              f"attempt {e.attempt}  {extra}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `supportmesh demo`."""
    argparse.ArgumentParser(prog="supportmesh demo", description=__doc__).parse_args(argv)
    asyncio.run(run_demo())
    return 0
