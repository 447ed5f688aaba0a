"""The benchmark harness keeps working: a smoke run against the test mesh (no figure is asserted)."""

from __future__ import annotations

import json
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
    assert {"serial", "concurrency", "actors", "processes", "raw_floor", "in_process"} <= set(results)
    assert (tmp_path / "mesh.md").read_text().startswith("# supportmesh mesh benchmark")
    assert (tmp_path / "mesh.png").stat().st_size > 1000
