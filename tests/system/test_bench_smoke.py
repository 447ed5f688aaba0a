"""The benchmark harness keeps working: a smoke run against the test mesh. No figure and no target is asserted,
only that the four ratios to the raw floor (issue 17) are measured and reported."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.e2e


def test_mesh_bench_smoke(mesh, tmp_path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "mesh_bench.py"), "--smoke", "--endpoints",
                          str(mesh.endpoints_path), "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "SUPPORTMESH_AUTH_SECRET": mesh.auth_secret})
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "mesh.json").read_text())
    assert {"serial", "concurrency", "actors", "processes", "raw_floor", "in_process", "ratios"} <= set(results)
    ratios = results["ratios"]
    assert len(ratios) == 4
    for r in ratios:  # each measured: a finite positive ratio, its target and whether it is met
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["target"] and isinstance(r["met"], bool), r
    # Where a serial chat's time goes: every part measured, and together about one chat (medians need not add up).
    parts = results["actors"]["serial_parts_ms_p50"]
    assert set(parts) == {"before_saga_started", "to_first_step", "steps", "hops", "to_client"}, parts
    assert all(ms > 0 for ms in parts.values()), parts
    assert 0.5 < sum(parts.values()) / results["serial"]["p50_ms"] < 1.5, (parts, results["serial"])
    report = (tmp_path / "mesh.md").read_text()
    assert "Where a serial chat's time goes" in report
    assert report.startswith("# supportmesh mesh benchmark") and "target met" in report
    assert all(r["ratio"] in report for r in ratios) and "target met" in out.stdout  # printed too
    assert (tmp_path / "mesh.png").stat().st_size > 1000


def test_stream_layout_bench_smoke(tmp_path) -> None:
    """The work-stream layout benchmark runs each layout on a server of its own and reports all three."""
    out_file = tmp_path / "stream-layout.json"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "stream_layout_bench.py"), "--rounds", "1",
                          "--messages", "60", "--out", str(out_file)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out_file.read_text())
    assert set(results["summary"]) == {"one-workqueue", "per-hop-workqueue", "one-limits"}
    for layout, figures in results["summary"].items():
        assert all(math.isfinite(v) and v > 0 for v in figures.values()), (layout, figures)
    assert "| per-hop-workqueue |" in out.stdout
