"""Test helpers, imported as `tests.support.<module>`: the local mesh, the runtime harness, toy actors, clients."""

from pathlib import Path

# The repository's root: tests run programs (`python -m actors`, `supportmesh up`, make) from it.
REPO = Path(__file__).resolve().parents[2]
