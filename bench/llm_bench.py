"""LLM client micro-benchmark: CPU and wall time per call of the local model, as an actor calls it (the GenAI
span on a real SDK tracer provider, the metrics), directly and through LiteLLM.

    .venv/bin/python bench/llm_bench.py [--calls 300]

On a checkout from before the direct path (where `LLMClient._call` has no `via_litellm`) only the LiteLLM path is
measured: `PYTHONPATH=<old checkout> python bench/llm_bench.py` gives the before figure.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not any(Path(p).resolve() == ROOT for p in sys.path if p):
    sys.path.append(str(ROOT))  # PYTHONPATH (an older checkout) wins over this one

from actors.llm import LOCAL_MODEL, LLMClient  # noqa: E402  (sets LiteLLM's offline settings first)
from actors.prompts import intent_messages  # noqa: E402
from observability.tracing import setup_tracing  # noqa: E402
from config.settings import Settings  # noqa: E402


async def measure(call, calls: int) -> dict[str, float]:
    """CPU (all threads of the process) and wall milliseconds per call, after 20 warm-up calls; LiteLLM's
    logging callbacks, which run after a call returns, are given time to finish inside the CPU window."""
    for _ in range(20):
        await call()
    await asyncio.sleep(0.5)
    walls = []
    cpu0 = time.process_time()
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - t0)
    await asyncio.sleep(0.5)
    cpu = time.process_time() - cpu0
    return {"cpu_ms_per_call": round(cpu * 1000 / calls, 3), "wall_ms_p50": round(statistics.median(walls) * 1000, 3)}


async def main(calls: int) -> None:
    setup_tracing("supportmesh-llm-bench")
    messages = intent_messages("My order 12345 is late!")
    client = LLMClient(Settings())
    paths = {"default path (LLMClient.complete)": lambda: client.complete(messages, purpose="intent")}
    if "via_litellm" in inspect.signature(client._call).parameters:
        paths["local model through LiteLLM"] = lambda: client._call(LOCAL_MODEL, messages, "intent", api_base=None,
                                                                    retries=0, via_litellm=True)
    for name, call in paths.items():
        m = await measure(call, calls)
        print(f"{name:40s} CPU {m['cpu_ms_per_call']:7.3f} ms/call   wall p50 {m['wall_ms_p50']:7.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
