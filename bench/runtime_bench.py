"""Runtime benchmark: one message at a time through 8 no-op actors with the saga log on, and the same
pipeline with it off; then 16 messages in flight. Prints p50/p99 latency, messages/s and the ratios, and
writes `bench/results/runtime.json`.

    .venv/bin/python bench/runtime_bench.py [--messages 300] [--steps 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project and its tests.support helpers

import nats  # noqa: E402

from actors.base import Actor, StepContext  # noqa: E402
from actors.runtime import ActorRuntime  # noqa: E402
from saga.log import SagaLog  # noqa: E402
from saga.protocol import Message, new_message  # noqa: E402
from saga.transport import ensure_stream, publish, start_saga  # noqa: E402
from supportmesh.config import Settings  # noqa: E402
from supportmesh.natsserver import NatsServer  # noqa: E402
from tests.support.toy_actors import noop_class  # noqa: E402


class Reply(Actor):
    """Last step: answers the waiting caller on core NATS."""

    name = "reply"

    async def handle(self, message: Message, ctx: StepContext) -> None:
        if message.metadata.reply_subject:
            await ctx.publish_reply(message.metadata.reply_subject, message.message_id.encode())
        return None


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, in milliseconds."""
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx] * 1000


async def run_mode(server: NatsServer, *, durable: bool, steps: int, messages: int, inflight: int) -> dict[str, Any]:
    """Run the pipeline in one mode and measure it."""
    settings = Settings(nats_url=server.url, saga_log_enabled=durable, stream_name="SUPPORT")
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await ensure_stream(js, settings)
    saga = await SagaLog.open(js)
    actors = [noop_class(i) for i in range(steps - 1)] + [Reply]
    runtimes = [ActorRuntime(cls(), settings, concurrency=32) for cls in actors]
    for rt in runtimes:
        await rt.start()
    route = [cls.name for cls in actors]
    waiters: dict[str, asyncio.Future[float]] = {}
    inbox = nc.new_inbox()

    async def on_reply(msg: Any) -> None:
        fut = waiters.pop(msg.data.decode(), None)
        if fut and not fut.done():
            fut.set_result(time.perf_counter())

    await nc.subscribe(inbox, cb=on_reply)

    async def one() -> float:
        m = new_message(session_id="bench", customer_email="b@example.com", customer_message="hi", steps=route,
                        reply_subject=inbox)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        waiters[m.message_id] = fut
        t0 = time.perf_counter()
        if durable:
            await start_saga(js, saga, m)
        else:
            await publish(js, m)
        return (await asyncio.wait_for(fut, 30)) - t0

    for _ in range(20):  # warm-up
        await one()
    serial = [await one() for _ in range(messages)]

    sem = asyncio.Semaphore(inflight)

    async def bounded() -> float:
        async with sem:
            return await one()

    t0 = time.perf_counter()
    concurrent = await asyncio.gather(*(bounded() for _ in range(messages)))
    wall = time.perf_counter() - t0
    for rt in runtimes:
        await rt.stop()
    await nc.close()
    return {
        "durable": durable,
        "steps": steps,
        "serial_p50_ms": round(pct(serial, 50), 3),
        "serial_p99_ms": round(pct(serial, 99), 3),
        "serial_mean_ms": round(statistics.mean(serial) * 1000, 3),
        f"inflight{inflight}_p50_ms": round(pct(concurrent, 50), 3),
        f"inflight{inflight}_p99_ms": round(pct(concurrent, 99), 3),
        f"inflight{inflight}_msgs_per_s": round(messages / wall, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--sync", default="always", help="nats-server sync_interval (always, 2m, ...)")
    args = parser.parse_args()
    results = []
    for durable in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            server = NatsServer(store_dir=Path(tmp) / "js", sync_interval=args.sync).start()
            try:
                results.append(await run_mode(server, durable=durable, steps=args.steps, messages=args.messages,
                                              inflight=args.inflight))
            finally:
                server.stop()
    on, off = results
    summary = {
        "sync_interval": args.sync,
        "on": on,
        "off": off,
        "ratio_serial_p50": round(on["serial_p50_ms"] / off["serial_p50_ms"], 2),
        "durable_overhead_per_step_ms": round((on["serial_p50_ms"] - off["serial_p50_ms"]) / args.steps, 3),
    }
    out = ROOT / "bench" / "results" / "runtime.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
