"""Commerce-call micro-benchmark: CPU (this process, and the mock APIs' process) and wall time per call of the
context retriever's lookups against the real mock APIs (`python -m mocks.server`), with each candidate client.

    .venv/bin/python bench/http_bench.py [--calls 600]

Each round is what the context retriever asks per chat: the customer and their orders at once. Candidates: one
shared httpx.AsyncClient with keep-alive (the CommerceClient before aiohttp), without and with the httpx client
instrumentation; httpx without keep-alive (a client per call); a bare shared aiohttp ClientSession; and the
CommerceClient as the actors now run it (aiohttp, our own client spans). The SDK tracer provider is installed as
in the actors (no exporter). HTTP/2 is not a candidate: uvicorn serves HTTP/1.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from actors.commerce import CommerceClient  # noqa: E402
from config.settings import Settings  # noqa: E402
from supportmesh.natsserver import free_port  # noqa: E402

EMAIL = "user@example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLK_TCK


async def measure(round_: Callable[[], Awaitable[object]], rounds: int, server_pid: int) -> dict[str, float]:
    """Per call (two calls a round): client CPU, server CPU and the round's wall p50, after 30 warm-up rounds."""
    for _ in range(30):
        await round_()
    walls = []
    cpu0, srv0 = time.process_time(), cpu_s(server_pid)
    for _ in range(rounds):
        t0 = time.perf_counter()
        await round_()
        walls.append(time.perf_counter() - t0)
    cpu, srv = time.process_time() - cpu0, cpu_s(server_pid) - srv0
    return {"client_cpu_ms": round(cpu * 1000 / (2 * rounds), 3), "server_cpu_ms": round(srv * 1000 / (2 * rounds), 3),
            "round_wall_ms_p50": round(statistics.median(walls) * 1000, 3)}


async def main(calls: int) -> None:
    from observability.tracing import setup_tracing

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mocks.server", "--port", str(port)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        setup_tracing("supportmesh-http-bench")
        settings = Settings(customers_api_url=base, orders_api_url=base, tracking_api_url=base)
        rounds = calls // 2
        results: dict[str, dict[str, float]] = {}

        plain = CommerceClient(settings, transport=httpx.AsyncHTTPTransport())  # httpx: a transport handed in
        results["httpx shared client, keep-alive"] = await measure(
            lambda: asyncio.gather(plain.customer(EMAIL), plain.customer_orders(EMAIL)), rounds, server.pid)

        async def fresh() -> None:  # no keep-alive: a client (and a connection) per call
            async def one(path: str) -> None:
                async with httpx.AsyncClient() as c:
                    (await c.get(f"{base}{path}")).json()
            await asyncio.gather(one(f"/customers/{EMAIL}"), one(f"/customers/{EMAIL}/orders"))
        results["httpx client per call, no keep-alive"] = await measure(fresh, rounds // 4, server.pid)

        import aiohttp

        async with aiohttp.ClientSession(base) as session:
            async def get(path: str) -> object:
                async with session.get(path) as r:
                    return await r.json()
            results["aiohttp shared session, keep-alive"] = await measure(
                lambda: asyncio.gather(get(f"/customers/{EMAIL}"), get(f"/customers/{EMAIL}/orders")), rounds,
                server.pid)

        from observability.tracing import instrument_httpx

        instrument_httpx()  # as the actor processes run: instrumentation patches clients made after it
        traced = CommerceClient(settings, transport=httpx.AsyncHTTPTransport())
        results["httpx shared client, keep-alive, instrumented"] = await measure(
            lambda: asyncio.gather(traced.customer(EMAIL), traced.customer_orders(EMAIL)), rounds, server.pid)
        deployed = CommerceClient(settings)  # aiohttp, with its own client spans
        if deployed.http is None:
            results["CommerceClient as deployed (aiohttp, our spans)"] = await measure(
                lambda: asyncio.gather(deployed.customer(EMAIL), deployed.customer_orders(EMAIL)), rounds,
                server.pid)
        for c in (plain, traced, deployed):
            await c.close()
        print(f"{'candidate':55s} {'client CPU':>11s} {'server CPU':>11s} {'round p50':>10s}  (ms per call; round: 2 calls)")
        for name, m in results.items():
            print(f"{name:55s} {m['client_cpu_ms']:11.3f} {m['server_cpu_ms']:11.3f} {m['round_wall_ms_p50']:10.3f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=600)
    asyncio.run(main(parser.parse_args().calls))
