"""Flame graphs of two actor processes under load (16 chats in flight): a mesh of our own, the mesh benchmark's
chat client against it, and py-spy recording the actors meanwhile.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/flamegraphs.py bench/results/flamegraphs [process ...]

The processes are named as in the mesh's endpoints.json (`gateway-1`, `context_retriever-1`, ...); by default
the sentiment analyzer and the context retriever.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import mesh_bench  # noqa: E402

ACTORS = ("sentiment_analyzer-1", "context_retriever-1")  # a naive actor, and one that calls the commerce APIs
RECORD_S = 30
INFLIGHT = 16


def main(out: Path, processes: tuple[str, ...] = ACTORS) -> None:
    """Start a mesh, warm it up, record `processes` for `RECORD_S` seconds under load, stop the mesh."""
    out.mkdir(parents=True, exist_ok=True)
    with mesh_bench.local_mesh("supportmesh-flame-") as mesh:
        ep = mesh.endpoints
        headers = mesh_bench.signed_in(ep)
        asyncio.run(mesh_bench.chats(ep["gateway_url"], 40, 4, headers))  # warm-up
        pids = {n: p["pid"] for n, p in ep["processes"].items() if p.get("pid")}
        spies = [subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(pids[name]),
                                   "--duration", str(RECORD_S), "--rate", "100", "--nonblocking",
                                   "--format", "flamegraph", "-o", str(out / f"{name.removesuffix('-1')}.svg")])
                 for name in processes]
        started, sent = time.time(), 0
        while time.time() - started < RECORD_S + 2:
            latencies, _, _ = asyncio.run(mesh_bench.chats(ep["gateway_url"], 10 * INFLIGHT, INFLIGHT, headers))
            sent += len(latencies)
        print(f"{sent} chats at {INFLIGHT} in flight in {time.time() - started:.1f} s")
        for spy in spies:
            spy.wait(timeout=120)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/flamegraphs"), tuple(sys.argv[2:]) or ACTORS)
