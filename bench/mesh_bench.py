"""Mesh benchmark: the whole local mesh with the local model.

Measures chats one at a time (p50/p95/p99) and at concurrency 1, 4, 16 and 64 (throughput, latency, CPU per
chat); the time per actor and per hop from the saga events; CPU seconds and peak RSS per process per chat. In the
same run: (a) the raw floor — the same number of JetStream hops with one KV write each and no logic — and (b) an
in-process baseline — the same actor logic called directly in one process. The headline is four ratios to the
floor measured in the same run (`ratios`), since machines differ up to 3x in absolute speed. The floor is
measured three times (before the mesh's chats, between the serial chats and the sweep, after the sweep) and each
of its figures is the median of the three: one floor run moved by a third between runs on a 2-core machine. Writes
bench/results/mesh.json, mesh.md and mesh.png, and prints mesh.md.

    .venv/bin/python bench/mesh_bench.py                 # starts its own mesh (supportmesh up)
    .venv/bin/python bench/mesh_bench.py --smoke          # a few dozen chats (CI)
    .venv/bin/python bench/mesh_bench.py --endpoints .supportmesh/endpoints.json   # a running mesh
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project and its tests.support helpers
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import nats  # noqa: E402
import orjson  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig  # noqa: E402

from supportmesh.credentials import nats_options, redis_url  # noqa: E402

MESSAGE = "My order 12345 is late!"
HOPS = 7  # the happy path's steps
INFLIGHT = 16  # the concurrency at which the mesh's throughput and CPU are set against the floor's
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """q-th percentile in milliseconds."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] * 1000, 2)


def body() -> dict[str, str]:
    return {"session_id": uuid.uuid4().hex, "message": MESSAGE}


def signed_in(endpoints: dict[str, Any]) -> dict[str, str]:
    """The `Authorization` header of user@example.com for the mesh of `endpoints` (its data dir's secret, or
    SUPPORTMESH_AUTH_SECRET: the test mesh's)."""
    from gateway.auth import mint_token, read_secret

    secret = os.environ.get("SUPPORTMESH_AUTH_SECRET") or read_secret(endpoints["data_dir"])
    if not secret:
        raise SystemExit("no auth secret: set SUPPORTMESH_AUTH_SECRET to the mesh's")
    return {"Authorization": f"Bearer {mint_token(secret, 'user@example.com', 3 * 3600)}"}


# ---- the mesh ------------------------------------------------------------------------------------------

RESENT: list[int] = [0]  # requests sent again after a connection the server had closed (reported)


async def send(client: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """One request and its JSON answer (status, body), sent again (up to twice) when the pooled connection it
    went out on turns out closed by the server: a keep-alive race under load, where the request did not reach the
    gateway. (No Idempotency-Key: it would add a saga read to every chat measured; at worst a chat is counted
    twice.)"""
    for attempt in range(3):
        try:
            async with client.request(method, url, **kwargs) as r:
                return r.status, orjson.loads(await r.read())
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt == 2:
                raise
            RESENT[0] += 1
    raise AssertionError("unreachable")


async def chats(base: str, count: int, concurrency: int, headers: dict[str, str],
                clock: dict[str, tuple[float, float]] | None = None) -> tuple[list[float], float, list[str]]:
    """`count` chats with `concurrency` in flight: latencies (s), wall time (s), message ids. `clock`, when
    given, gets each chat's wall-clock send and answer times by message id (set against the saga log's).

    The load comes from one aiohttp session with keep-alive connections: the client shares the machine's cores
    with the mesh, and httpx took about 1.3 ms of CPU per chat where aiohttp takes about a third of that (the
    floor's client, nats-py in this process, is counted in the floor's own CPU)."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    ids: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency + 4, keepalive_timeout=30)
    async with aiohttp.ClientSession(base_url=base, timeout=aiohttp.ClientTimeout(total=60), connector=connector,
                                     headers=headers) as client:

        async def one() -> None:
            async with sem:
                sent, started = time.time(), time.perf_counter()
                status, answer = await send(client, "POST", "/api/chat", json=body())
                while status == 202:
                    await asyncio.sleep(0.05)
                    status, answer = await send(client, "GET", f"/api/chat/{answer['message_id']}")
                latencies.append(time.perf_counter() - started)
                ids.append(answer["message_id"])
                if clock is not None:
                    clock[ids[-1]] = (sent, time.time())

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return latencies, time.perf_counter() - t0, ids


# Where a serial chat's time goes: the parts `per_actor` splits it into, in order.
PARTS = {
    "before_saga_started": "the client's send to `saga_started` (HTTP, token, rate limits, the session's checks)",
    "to_first_step": "`saga_started` to the first step's start (the start's two writes, then the first hop's "
                     "publish and delivery)",
    "steps": "in the steps (sum over the route)",
    "hops": "between the steps (a step's `step_completed` to the next one's start)",
    "to_client": "the last `step_completed` to the client's answer (the reply, the HTTP response)",
}


def per_actor(base: str, ids: list[str], headers: dict[str, str],
              clock: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Median step time per actor and median hop time (one step's completion to the next step's start: its
    completion less its recorded duration); with `clock` (send and answer times by message id, from the same
    machine's clock), the median of each part of a chat (`PARTS`) over the chats with a clean run."""
    steps: dict[str, list[float]] = {}
    hops: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name in PARTS}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        for mid in ids:
            events = client.get(f"/api/sagas/{mid}").json()["events"]
            done = {e["step_index"]: e for e in events if e["kind"] == "step_completed"}
            chat_hops: list[float] = []
            for e in events:
                if e["kind"] == "step_completed" and e.get("duration_ms") is not None:
                    steps.setdefault(e["actor"], []).append(e["duration_ms"])
                if (e["kind"] == "step_completed" and e["attempt"] == 1 and e.get("duration_ms") is not None
                        and e["step_index"] - 1 in done):
                    chat_hops.append((e["ts"] - e["duration_ms"] / 1000 - done[e["step_index"] - 1]["ts"]) * 1000)
            hops += chat_hops
            started = next((e for e in events if e["kind"] == "saga_started"), None)
            timed = [done[i] for i in sorted(done) if done[i].get("duration_ms") is not None]
            if clock is None or mid not in clock or started is None or not timed or len(timed) != len(done) \
                    or len(chat_hops) != len(done) - 1:
                continue  # a retried or redelivered step: no clean split
            sent, answered = clock[mid]
            first = timed[0]["ts"] - timed[0]["duration_ms"] / 1000
            for name, ms in (("before_saga_started", (started["ts"] - sent) * 1000),
                             ("to_first_step", (first - started["ts"]) * 1000),
                             ("steps", sum(e["duration_ms"] for e in timed)), ("hops", sum(chat_hops)),
                             ("to_client", (answered - timed[-1]["ts"]) * 1000)):
                parts[name].append(ms)
    return {"step_ms_p50": {a: round(statistics.median(v), 3) for a, v in steps.items()},
            "hop_ms_p50": round(statistics.median(hops), 3) if hops else None,
            "serial_parts_ms_p50": {name: round(statistics.median(v), 3) for name, v in parts.items() if v}}


def proc_usage(pids: dict[str, int]) -> dict[str, tuple[float, int]]:
    """CPU seconds and peak RSS (KiB) of each process."""
    out = {}
    for name, pid in pids.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
            hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM:"))
            out[name] = (cpu, hwm)
        except (OSError, StopIteration, IndexError):
            continue
    return out


# ---- (a) raw floor: the same hops, one KV write each, no logic -------------------------------------------------

def start_hops(js: Any, hops: int, subject: str, stream_of: Callable[[int], str], inflight: int,
               done: dict[str, asyncio.Future[float]], stop: asyncio.Event,
               write: Callable[[int, Any], Awaitable[None]] | None = None) -> list[asyncio.Task[None]]:
    """`hops` pull consumers (`h<i>` on `stream_of(i)`, subject `<subject>.<i>`) that each run `write` (when
    given), publish the message on to the next hop and ack it; the last one resolves the message's future in
    `done` (by its `id` header). Run until `stop` is set."""

    async def hop(i: int) -> None:
        await js.add_consumer(stream_of(i), ConsumerConfig(durable_name=f"h{i}", filter_subject=f"{subject}.{i}",
                                                           ack_policy=AckPolicy.EXPLICIT))
        sub = await js.pull_subscribe_bind(f"h{i}", stream=stream_of(i))

        async def step(m: Any) -> None:
            if write is not None:
                await write(i, m)
            if i + 1 < hops:
                await js.publish(f"{subject}.{i + 1}", m.data, headers=m.headers)
            else:
                fut = done.get(m.headers["id"])
                if fut is not None and not fut.done():
                    fut.set_result(time.perf_counter())
            await m.ack()

        while not stop.is_set():
            try:
                msgs = await sub.fetch(inflight, timeout=1)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            await asyncio.gather(*(step(m) for m in msgs))

    return [asyncio.create_task(hop(i)) for i in range(hops)]


async def raw_floor(endpoints: dict[str, Any], hops: int, count: int, inflight: int = 16,
                    nats_pid: int | None = None) -> dict[str, Any]:
    """`hops` pull consumers that each write one KV key and publish on (no logic, no tracing, no models), in
    this one process: messages one at a time, then `inflight` at once. Returns the serial latencies, the
    throughput in flight and the CPU per message (this process plus nats-server) of the in-flight run."""
    from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(**nats_options(endpoints))
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="FLOOR", subjects=["floor.>"], retention=RetentionPolicy.WORK_QUEUE,
                                     storage=StorageType.FILE))
    kv = await js.create_key_value(KeyValueConfig(bucket="floor_log", storage=StorageType.FILE))
    done: dict[str, asyncio.Future[float]] = {}
    stop = asyncio.Event()

    async def write(i: int, m: Any) -> None:
        await kv.put(f"m.{m.headers['id']}.{i}", m.data)

    tasks = start_hops(js, hops, "floor", lambda _: "FLOOR", inflight, done, stop, write=write)
    await asyncio.sleep(0.5)
    payload = json.dumps(body()).encode() * 3

    async def one(n: int) -> float:
        done[str(n)] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        await js.publish("floor.0", payload, headers={"id": str(n)})
        end = await asyncio.wait_for(done[str(n)], 30)
        return end - t0

    for n in range(10):
        await one(n)
    serial = [await one(10 + n) for n in range(count)]
    sem = asyncio.Semaphore(inflight)

    async def limited(n: int) -> float:
        async with sem:
            return await one(n)

    cpu0, nats0, t0 = time.process_time(), _cpu_s(nats_pid), time.perf_counter()
    await asyncio.gather(*(limited(100_000 + n) for n in range(count)))
    wall, cpu, nats_cpu = time.perf_counter() - t0, time.process_time() - cpu0, _cpu_s(nats_pid) - nats0
    stop.set()
    for t in tasks:
        t.cancel()
    await js.delete_stream("FLOOR")
    await js.delete_key_value("floor_log")
    await nc.close()
    return {"serial": serial, "inflight": inflight, "msgs_per_s": round(count / wall, 1),
            "cpu_ms_per_msg": round((cpu + nats_cpu) * 1000 / count, 3),
            "nats_cpu_ms_per_msg": round(nats_cpu * 1000 / count, 3)}


FLOOR_FIGURES = ("p50_ms", "p95_ms", "p99_ms", "msgs_per_s", "cpu_ms_per_msg", "nats_cpu_ms_per_msg")


def median_floor(floors: list[dict[str, Any]], summary: Any) -> dict[str, Any]:
    """Each figure of the floor as the median of its runs, and every run's figures (`runs`) to show the spread."""
    runs = [{**summary(f["serial"]), **{k: f[k] for k in FLOOR_FIGURES[3:]}} for f in floors]
    return {**{k: round(statistics.median(r[k] for r in runs), 3) for k in FLOOR_FIGURES}, "runs": runs}


def _cpu_s(pid: int | None) -> float:
    """CPU seconds of a process (0 when unknown)."""
    if not pid:
        return 0.0
    usage = proc_usage({"p": pid}).get("p")
    return usage[0] if usage else 0.0


# ---- (b) in-process baseline: the same actor logic, called directly ----------------------------------------------

async def in_process(endpoints: dict[str, Any], count: int) -> list[float]:
    """The happy path's actor logic in one process (real mock APIs and Redis, no NATS, no saga log)."""
    from actors.base import StepResult
    from actors.context_retriever import ContextRetriever
    from actors.decision_router import DecisionRouter
    from actors.domain import HAPPY_PATH, new_message
    from actors.guardrail_validator import GuardrailValidator
    from actors.intent_analyzer import IntentAnalyzer
    from actors.response_generator import ResponseGenerator
    from actors.sentiment_analyzer import SentimentAnalyzer
    from config.settings import Settings
    from tests.support.fakes import FakeContext
    from saga.replay import apply_step

    settings = Settings(redis_url=redis_url(endpoints), customers_api_url=endpoints["mocks_url"],
                        orders_api_url=endpoints["mocks_url"], tracking_api_url=endpoints["mocks_url"])
    actors = [SentimentAnalyzer(), IntentAnalyzer(), ContextRetriever(), DecisionRouter(), ResponseGenerator(),
              GuardrailValidator()]
    for a in actors:
        await a.start(settings)
    ctx = FakeContext(settings)
    latencies = []
    for n in range(count + 10):
        message = new_message(session_id=uuid.uuid4().hex, customer_email="user@example.com",
                              customer_message=MESSAGE, steps=HAPPY_PATH, customer_verified=True)
        t0 = time.perf_counter()
        for actor in actors:
            raw = await actor.handle(message, ctx)
            result = raw if isinstance(raw, StepResult) else StepResult(enrichment=dict(raw or {}))
            memo: dict[str, Any] = {"enrichment": result.enrichment}
            if result.remaining_route is not None:
                memo["remaining_route"] = result.remaining_route
            message = apply_step(message, memo)
        if n >= 10:
            latencies.append(time.perf_counter() - t0)
    for a in actors:
        await a.stop()
    return latencies


# ---- report -------------------------------------------------------------------------------------------------------

def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator to 3 digits, or None when either is unknown or the denominator is not positive."""
    if numerator is None or not denominator or denominator <= 0:
        return None
    return round(numerator / denominator, 3)


def ratios(serial_p50_ms: float, at_inflight: dict[str, Any] | None, floor: dict[str, Any]) -> list[dict[str, Any]]:
    """The four figures of the mesh against the raw floor of the same run, each with its target (issue 17): the
    mesh's chat against the floor's message, one at a time and at `INFLIGHT` in flight. Ratios, not absolute
    times, because machines differ up to 3x in speed and the floor moves with them."""
    c = at_inflight or {}
    rows = [
        ("chat p50 one at a time / floor p50", serial_p50_ms, floor["p50_ms"], "ms", "<=", 2.0),
        (f"CPU per chat (all processes) / floor CPU per message, {INFLIGHT} in flight",
         c.get("cpu_ms_per_chat"), floor["cpu_ms_per_msg"], "ms", "<=", 5.0),
        (f"chats/s / floor messages/s, {INFLIGHT} in flight", c.get("chats_per_s"), floor["msgs_per_s"], "/s",
         ">=", 0.4),
        (f"nats-server CPU per chat / floor nats-server CPU per message, {INFLIGHT} in flight",
         c.get("nats_cpu_ms_per_chat"), floor["nats_cpu_ms_per_msg"], "ms", "<=", 2.0),
    ]
    out = []
    for name, mesh, base, unit, op, target in rows:
        value = ratio(mesh, base)
        met = value is not None and (value <= target if op == "<=" else value >= target)
        out.append({"ratio": name, "mesh": mesh, "floor": base, "unit": unit, "value": value,
                    "target": f"{op} {target:g}x", "met": met})
    return out


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    """mesh.json, mesh.md (the four ratios first) and mesh.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mesh.json").write_text(json.dumps(results, indent=2))
    s, f, b = results["serial"], results["raw_floor"], results["in_process"]
    lines = [
        "# supportmesh mesh benchmark", "",
        f"{results['machine']} · load average {results['load_average']} at the start · local model · "
        f"nats sync_interval always · {results['chats_serial']} serial chats · "
        f"{results['requests_resent']} requests resent after a closed keep-alive connection",
        "", "The mesh against the raw floor measured in the same run (the floor: "
        f"{HOPS} JetStream hops with one KV write each, no logic):", "",
        "| ratio | mesh | floor | ratio | target | target met |", "|---|---|---|---|---|---|",
        *[f"| {r['ratio']} | {r['mesh']} {r['unit']} | {r['floor']} {r['unit']} | "
          f"{'n/a' if r['value'] is None else format(r['value'], '.2f') + 'x'} | {r['target']} | "
          f"{'yes' if r['met'] else 'no'} |" for r in results["ratios"]],
        "", "| | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|",
        f"| chat, one at a time (HTTP end to end) | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} |",
        f"| raw floor ({HOPS} JetStream hops, 1 KV write each) | {f['p50_ms']} | {f['p95_ms']} | {f['p99_ms']} |",
        f"| in-process baseline (same logic, no mesh) | {b['p50_ms']} | {b['p95_ms']} | {b['p99_ms']} |",
        "", f"Mesh / in-process (p50): **{results['ratio_mesh_to_in_process']}×**; hop p50 "
        f"{results['actors']['hop_ms_p50']} ms. Raw floor at {f['inflight']} in flight: {f['msgs_per_s']} "
        f"messages/s, {f['cpu_ms_per_msg']} ms CPU per message (nats-server {f['nats_cpu_ms_per_msg']} ms): the "
        f"medians of {len(f.get('runs', []))} floor runs (before, between and after the mesh's chats), which measured "
        + "; ".join(f"{r['p50_ms']} ms p50, {r['msgs_per_s']}/s, {r['cpu_ms_per_msg']} ms CPU "
                    f"(nats {r['nats_cpu_ms_per_msg']} ms)" for r in f.get("runs", [])) + ".",
        "", "| concurrency | chats/s | p50 ms | p99 ms | CPU ms per chat | nats-server CPU ms per chat | "
        "load generator's CPU ms per chat (not in the mesh's) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["concurrency"]:
        lines.append(f"| {c['concurrency']} | {c['chats_per_s']} | {c['p50_ms']} | {c['p99_ms']} | "
                     f"{c['cpu_ms_per_chat']} | {c['nats_cpu_ms_per_chat']} | {c.get('client_cpu_ms_per_chat')} |")
    parts = results["actors"].get("serial_parts_ms_p50") or {}
    if parts:
        lines += ["", "Where a serial chat's time goes (p50 of each part over the last 50 serial chats, from the "
                  "client's clock and the saga log's timestamps on the same machine; the parts' p50s need not add "
                  "up to the chat's):", "", "| part | p50 ms |", "|---|---|"]
        lines += [f"| {PARTS[name]} | {ms} |" for name, ms in parts.items()]
    lines += ["", "| actor | step p50 ms |", "|---|---|"]
    lines += [f"| {a} | {v} |" for a, v in results["actors"]["step_ms_p50"].items()]
    lines += ["", "| process | CPU ms per chat (whole sweep) | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {p} | {v['cpu_ms_per_chat']} | {v['peak_rss_mib']} |" for p, v in results["processes"].items()]
    (out_dir / "mesh.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        conc = [c["concurrency"] for c in results["concurrency"]]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            ax1.plot(conc, [c[key] for c in results["concurrency"]], marker="o", label=label)
        ax1.set(xscale="log", xlabel="concurrent chats", ylabel="latency (ms)", title="Chat latency")
        ax1.legend()
        ax2.plot(conc, [c["chats_per_s"] for c in results["concurrency"]], marker="o", color="tab:green")
        ax2.set(xscale="log", xlabel="concurrent chats", ylabel="chats / s", title="Throughput")
        fig.tight_layout()
        fig.savefig(out_dir / "mesh.png", dpi=110)
    except ImportError:
        pass


def cpu_ms_per_chat(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], chats_n: int,
                    only: str | None = None) -> float:
    """CPU milliseconds per chat between two `proc_usage` readings: every process, or the one named `only`."""
    names = [n for n in after if n in before and (only is None or n == only)]
    return round(sum(after[n][0] - before[n][0] for n in names) * 1000 / max(chats_n, 1), 3)


async def run(endpoints: dict[str, Any], serial_n: int, levels: list[int], per_level: int,
              floor_n: int) -> dict[str, Any]:
    """The whole benchmark against the mesh of `endpoints`; the results `write_report` writes."""
    base = endpoints["gateway_url"]
    headers = signed_in(endpoints)
    load = os.getloadavg()

    async def floor_run() -> dict[str, Any]:
        return await raw_floor(endpoints, HOPS, floor_n, inflight=INFLIGHT, nats_pid=endpoints.get("nats_pid"))

    floors = [await floor_run()]
    await chats(base, 20, 1, headers)  # warm-up
    clock: dict[str, tuple[float, float]] = {}
    serial, _, ids = await chats(base, serial_n, 1, headers, clock)
    floors.append(await floor_run())
    pids = {name: p["pid"] for name, p in endpoints["processes"].items() if p.get("pid")}
    pids.update({name: endpoints[key] for name, key in (("nats-server", "nats_pid"), ("redis-server", "redis_pid"))
                 if endpoints.get(key)})
    before = proc_usage(pids)
    sweep, total = [], 0
    for level in levels:
        at_start, client_at_start = proc_usage(pids), time.process_time()
        latencies, wall, _ = await chats(base, max(per_level, level * 4), level, headers)
        at_end, client_cpu_s = proc_usage(pids), time.process_time() - client_at_start
        total += len(latencies)
        sweep.append({"concurrency": level, "chats": len(latencies), "chats_per_s": round(len(latencies) / wall, 1),
                      "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
                      "cpu_ms_per_chat": cpu_ms_per_chat(at_start, at_end, len(latencies)),
                      "nats_cpu_ms_per_chat": cpu_ms_per_chat(at_start, at_end, len(latencies), "nats-server")
                      if "nats-server" in pids else None,
                      # The load generator (this process) is not the mesh: not in `cpu_ms_per_chat`, shown apart.
                      "client_cpu_ms_per_chat": round(client_cpu_s * 1000 / len(latencies), 3)})
    after = proc_usage(pids)
    processes = {name: {"cpu_ms_per_chat": round((after[name][0] - before[name][0]) * 1000 / total, 3),
                        "peak_rss_mib": round(after[name][1] / 1024, 1)} for name in after if name in before}
    floors.append(await floor_run())
    baseline = await in_process(endpoints, floor_n)
    summary = lambda v: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "p99_ms": pct(v, 99)}  # noqa: E731
    s = summary(serial)
    raw = {**median_floor(floors, summary), "inflight": INFLIGHT}
    return {
        "machine": f"{os.cpu_count()} cores",
        "load_average": " ".join(f"{x:.2f}" for x in load),
        "chats_serial": serial_n,
        "requests_resent": RESENT[0],
        "ratios": ratios(s["p50_ms"], next((c for c in sweep if c["concurrency"] == INFLIGHT), None), raw),
        "serial": s,
        "concurrency": sweep,
        "actors": per_actor(base, ids[-50:], headers, clock),
        "processes": processes,
        "raw_floor": raw,
        "in_process": summary(baseline),
        "ratio_mesh_to_in_process": round(s["p50_ms"] / max(pct(baseline, 50), 0.001), 2),
    }


@contextlib.contextmanager
def local_mesh(prefix: str) -> Iterator[Any]:
    """A local mesh (`supportmesh up`, as the tests start it) in a new temporary folder, stopped on the way out.
    The folder (the JetStream store, the history, the logs: tens of MB) is removed after a good run and kept,
    with a word on stderr, after a failed one."""
    from tests.support.mesh import Mesh

    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    # No secret given: `supportmesh up` keeps one in the data dir, where signed_in() reads it.
    mesh = Mesh(data_dir, env={"SUPPORTMESH_AUTH_SECRET": ""})
    try:
        yield mesh.start()
    except BaseException:
        print(f"the run failed; the mesh's data and logs are kept in {data_dir}", file=sys.stderr)
        raise
    finally:
        mesh.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", help="endpoints.json of a running mesh (default: start one)")
    parser.add_argument("--smoke", action="store_true", help="a few dozen chats, to check the harness works")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    # The smoke run keeps the INFLIGHT level: the ratios need it.
    serial_n, levels, per_level, floor_n = ((20, [1, INFLIGHT], 10, 64) if args.smoke
                                            else (200, [1, 4, INFLIGHT, 64], 200, 200))
    if args.endpoints:
        results = asyncio.run(run(json.loads(Path(args.endpoints).read_text()), serial_n, levels, per_level, floor_n))
    else:
        with local_mesh("supportmesh-bench-") as mesh:
            results = asyncio.run(run(mesh.endpoints, serial_n, levels, per_level, floor_n))
    write_report(results, Path(args.out))
    print((Path(args.out) / "mesh.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
