"""The cyclic garbage collector's settings of the mesh's long-running processes (actors, gateway, mock APIs).

A process of the mesh starts with about 300,000 objects that live as long as it does: the modules and models of
pydantic, LiteLLM, OpenTelemetry, FastAPI. CPython's collector walks every one of them at each full collection
(a full `gc.collect()` of an actor's startup heap took 340 ms on a 2-core machine here), and by default it
collects the young generation after every 700 new container objects, which a step makes by the thousand
(models, spans, futures). Once startup is done, `tune_gc` moves the startup heap out of the collector's reach
and lets the young generation grow ten times larger. An actor fed hops directly spent 12-33 % less CPU per hop;
in the whole mesh each process 2-9 % less (issue 17, `bench/results/README.md`). Objects made after startup are
collected as before.
"""

from __future__ import annotations

import gc

# Container allocations (less deallocations) between two collections of the young generation (CPython: 700).
YOUNG_THRESHOLD = 7_000


def tune_gc() -> None:
    """Collect once, freeze every object alive now (`gc.freeze`: never collected, never walked again) and raise
    the young generation's threshold. Call once per process, when its startup is done."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
