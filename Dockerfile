# One image for every supportmesh process: `supportmesh actor <name>`, `supportmesh gateway`, `supportmesh mocks`.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    SUPPORTMESH_WEB_DIR=/app/web

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin supportmesh
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

USER 10001
EXPOSE 8000 8100 9090
ENTRYPOINT ["supportmesh"]
CMD ["--help"]
