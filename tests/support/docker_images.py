"""The images of the Docker test, built without a registry and cached between runs.

- `local/debian:bookworm`: `debootstrap --variant=minbase` from the machine's own Debian mirror, with Debian's
  python3, python3-venv and redis-server included (one download, no apt inside a container), `docker import`ed
  (apt caches, docs, man pages and translations left out);
- `local/python:bookworm`: a venv on PATH on top (tests/support/docker/base.Dockerfile, with the machine's CA bundle
  for pip in its build context only); it also runs redis-server;
- `supportmesh:test`: the repository's Dockerfile with `BASE_IMAGE=local/python:bookworm`.

Each built image set is `docker save`d under the cache folder (`SUPPORTMESH_DOCKER_CACHE`, default
~/.cache/supportmesh-docker), named by a hash of what it is built from, and `docker load`ed by the next run.
In CI (`CI` set) nothing is cached unless `SUPPORTMESH_DOCKER_CACHE` names a folder the CI keeps: saving the
images takes ~20 s that a fresh machine would never get back.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import in_ci
from tests.support import REPO
from tests.support.docker_engine import DockerEngine

BASE_DOCKERFILE = Path(__file__).resolve().parent / "docker" / "base.Dockerfile"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN = "local/debian:bookworm"
PYTHON = "local/python:bookworm"
REDIS = PYTHON  # redis-server is in the base rootfs
DEBIAN_PACKAGES = ("python3", "python3-venv", "redis-server")
IMAGE = "supportmesh:test"
# Left out of the imported rootfs: nothing at run time reads them.
ROOTFS_EXCLUDES = ("./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*", "./usr/share/doc/*",
                   "./usr/share/man/*", "./usr/share/locale/*")


def cache_dir() -> Path | None:
    """Where built images are kept between runs (outside the repository); None: not kept."""
    configured = os.environ.get("SUPPORTMESH_DOCKER_CACHE")
    if not configured and in_ci():
        return None
    return Path(configured or "~/.cache/supportmesh-docker").expanduser()


def debian_mirror() -> str:
    """The machine's own Debian mirror (the first `debian` archive URI apt is configured with)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in (".list", ".sources", ""):
            continue
        for uri in re.findall(r"(?:^URIs:|^deb(?:\s+\[[^]]*\])?)\s+(\S+)", path.read_text(), re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def digest(*parts: str | Path) -> str:
    """A short hash of strings and files (folders: every file under them but bytecode)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            h.update(part.encode() + b"\0")
            continue
        files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
        for f in files:
            if "__pycache__" not in f.parts and f.suffix != ".pyc":
                h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f).encode() + b"\0")
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def dockerfile_sources() -> list[Path]:
    """The repository's Dockerfile, .dockerignore and everything its COPY lines copy."""
    sources = [REPO / "Dockerfile", REPO / ".dockerignore"]
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--"):
            sources += [REPO / src for src in words[1:-1]]
    return sources


class ImageBuilder:
    """Builds (or loads from the cache) the base images and the project's image in `engine`; records how long
    each part took in `timings` (seconds)."""

    def __init__(self, engine: DockerEngine, cache: Path | None = None) -> None:
        self.engine = engine
        self.cache = cache or cache_dir()
        self.timings: dict[str, float] = {}

    def ensure(self) -> dict[str, float]:
        """Every image of the test present in the engine; the timings."""
        base_key = digest(BASE_DOCKERFILE, CA_BUNDLE, debian_mirror(), *DEBIAN_PACKAGES, *ROOTFS_EXCLUDES)
        self._cached("base", base_key, [PYTHON], self._build_base)
        self._cached("image", digest(base_key, *dockerfile_sources()), [IMAGE], self._build_image)
        return self.timings

    def _cached(self, kind: str, key: str, images: list[str], build: Callable[[], None]) -> None:
        if self.cache is None:
            return build()
        self.cache.mkdir(parents=True, exist_ok=True)
        archive = self.cache / f"{kind}-{key}.tar"
        started = time.monotonic()
        if archive.exists():
            with open(archive, "rb") as f:
                self.engine.run("load", "-q", stdin=f.fileno(), timeout=300)
            self.timings[f"{kind}_load_s"] = round(time.monotonic() - started, 1)
            return
        build()
        saved = time.monotonic()
        partial = archive.with_suffix(".partial")
        self.engine.run("save", "-o", str(partial), *images, timeout=300)
        for old in self.cache.glob(f"{kind}-*.tar"):  # one set per kind: the cache does not grow
            old.unlink()
        partial.replace(archive)
        self.timings[f"{kind}_save_s"] = round(time.monotonic() - saved, 1)

    def _build_base(self) -> None:
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=self.engine.root) as tmp:
            rootfs, context = Path(tmp) / "rootfs", Path(tmp) / "context"
            started = time.monotonic()
            out = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                                  "bookworm", str(rootfs), debian_mirror()], capture_output=True, text=True,
                                 timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"debootstrap failed: {(out.stderr or out.stdout)[-3000:]}")
            self.timings["debootstrap_s"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), *(f"--exclude={x}" for x in ROOTFS_EXCLUDES), "-c", "."],
                                   stdout=subprocess.PIPE)
            assert tar.stdout is not None
            self.engine.run("import", "-", DEBIAN, stdin=tar.stdout.fileno(), timeout=300)
            tar.stdout.close()
            if tar.wait(timeout=60) != 0:
                raise RuntimeError(f"tar of the rootfs failed with {tar.returncode}")
            # The build context: the base Dockerfile and the machine's CA bundle (pip behind this network's
            # TLS inspection), never the repository's.
            context.mkdir()
            shutil.copy(BASE_DOCKERFILE, context / "Dockerfile")
            shutil.copy(CA_BUNDLE, context / "ca-certificates.crt")
            self.engine.run("build", "-q", "--network", "host", "-t", PYTHON, str(context), timeout=600)
            self.engine.run("rmi", DEBIAN, check=False)
            self.timings["base_build_s"] = round(time.monotonic() - started, 1)

    def _build_image(self) -> None:
        started = time.monotonic()
        self.engine.run("build", "-q", "--network", "host", "--build-arg", f"BASE_IMAGE={PYTHON}", "-t", IMAGE,
                        str(REPO), timeout=900)
        self.timings["image_build_s"] = round(time.monotonic() - started, 1)
