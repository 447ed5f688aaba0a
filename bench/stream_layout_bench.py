"""What the work stream's layout costs nats-server: the same 7-hop pipeline (no logic, no saga log, one
3.6 KB message per hop, the size of a chat's) over three layouts, each on a fresh nats-server that fsyncs
every write (`sync_interval: always`, as the mesh runs):

- `one-workqueue`: one work-queue stream over every hop's subject (the mesh today: `SUPPORT`);
- `per-hop-workqueue`: one work-queue stream per hop subject (one per actor);
- `one-limits`: one stream with limits retention (an ack does not remove the message).

In a work-queue stream the ack removes the message, which nats-server writes (and fsyncs) like a message, and
one stream stores its writes one at a time. This measures both effects before anyone restructures the mesh
around them: serial p50, messages/s and nats-server CPU per message at `--inflight` in flight. The layouts run
in turn, `--rounds` times (alternated, since one machine's speed moves). Prints a table and writes
`bench/results/stream-layout.json`.

    .venv/bin/python bench/stream_layout_bench.py [--rounds 3] [--messages 2000] [--inflight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import nats  # noqa: E402
from mesh_bench import start_hops  # noqa: E402
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig  # noqa: E402

from supportmesh.natsserver import NatsServer  # noqa: E402

HOPS = 7
LAYOUTS = ("one-workqueue", "per-hop-workqueue", "one-limits")
PAYLOAD = b"x" * 3600  # about a chat's hop message


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def declare(js: Any, layout: str) -> Callable[[int], str]:
    """The layout's streams; returns the stream name of each hop."""
    common: dict[str, Any] = {"storage": StorageType.FILE, "discard": DiscardPolicy.NEW}
    if layout == "per-hop-workqueue":
        for i in range(HOPS):
            await js.add_stream(StreamConfig(name=f"HOP{i}", subjects=[f"hop.{i}"],
                                             retention=RetentionPolicy.WORK_QUEUE, **common))
        return lambda i: f"HOP{i}"
    retention = RetentionPolicy.LIMITS if layout == "one-limits" else RetentionPolicy.WORK_QUEUE
    await js.add_stream(StreamConfig(name="HOPS", subjects=["hop.>"], retention=retention, **common))
    return lambda _: "HOPS"


async def run_layout(layout: str, messages: int, inflight: int) -> dict[str, Any]:
    """One layout on a fresh server: 200 serial messages (after a warm-up), then `messages` at `inflight`."""
    with tempfile.TemporaryDirectory(prefix="sm-layout-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js").start()
        try:
            return await _measure(server, layout, messages, inflight)
        finally:
            server.stop()


async def _measure(server: NatsServer, layout: str, messages: int, inflight: int) -> dict[str, Any]:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    stream_of = await declare(js, layout)
    done: dict[str, asyncio.Future[float]] = {}
    stop = asyncio.Event()
    tasks = start_hops(js, HOPS, "hop", stream_of, inflight, done, stop)
    for i in range(HOPS):  # every hop's consumer exists before the first message
        while True:
            try:
                await js.consumer_info(stream_of(i), f"h{i}")
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.01)

    async def one(n: int) -> float:
        arrived = done[str(n)] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        await js.publish("hop.0", PAYLOAD, headers={"id": str(n)})
        try:
            return await asyncio.wait_for(arrived, 30) - t0
        finally:
            done.pop(str(n), None)

    try:
        serial = [await one(n) for n in range(250)][50:]
        sem = asyncio.Semaphore(inflight)

        async def limited(n: int) -> None:
            async with sem:
                await one(n)

        assert server.pid is not None
        nats0, t0 = cpu_s(server.pid), time.perf_counter()
        await asyncio.gather(*(limited(100_000 + n) for n in range(messages)))
        wall, nats_cpu = time.perf_counter() - t0, cpu_s(server.pid) - nats0
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
    return {"layout": layout, "serial_p50_ms": round(statistics.median(serial) * 1000, 3),
            "msgs_per_s": round(messages / wall, 1), "nats_cpu_ms_per_msg": round(nats_cpu * 1000 / messages, 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream-layout.json"))
    args = parser.parse_args()
    runs = []
    for r in range(args.rounds):
        order = LAYOUTS if r % 2 == 0 else tuple(reversed(LAYOUTS))
        for layout in order:
            result = await run_layout(layout, args.messages, args.inflight)
            runs.append({"round": r + 1, **result})
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for layout in LAYOUTS:
        mine = [x for x in runs if x["layout"] == layout]
        summary[layout] = {k: round(statistics.mean(x[k] for x in mine), 3)
                           for k in ("serial_p50_ms", "msgs_per_s", "nats_cpu_ms_per_msg")}
    base = summary["one-workqueue"]
    print(f"\n{HOPS} hops, {args.inflight} in flight, means of {args.rounds} runs each:\n")
    print("| layout | serial p50 ms | msgs/s | nats-server CPU ms per msg | msgs/s vs one-workqueue |")
    print("|---|---|---|---|---|")
    for layout, s in summary.items():
        print(f"| {layout} | {s['serial_p50_ms']:.2f} | {s['msgs_per_s']:.1f} | {s['nats_cpu_ms_per_msg']:.3f} | "
              f"{s['msgs_per_s'] / base['msgs_per_s']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"hops": HOPS, "inflight": args.inflight, "messages": args.messages,
                                          "cpus": os.cpu_count(), "summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
