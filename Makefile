# supportmesh: two commands. `make run` starts the whole mesh locally; `make test` runs the test suite.
# Both create .venv and install what is missing (Python packages, and redis-server/prometheus/chromium from
# apt when absent).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-fast bench bench-smoke setup system-deps clean help

help:
	@echo "make run     start the mesh locally (NATS, Redis, mock APIs, actors, gateway) and print the widget URL"
	@echo "make test    run the test suite (installs everything it needs first)"
	@echo "make test-fast  the unit and offline tests only (no servers): the inner loop"
	@echo "make bench   run the benchmarks (results in bench/results/)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $(STAMP)

setup: $(STAMP)

# `make run` serves the API docs at /docs (off by default elsewhere); `supportmesh up` turns the demo sign-in on.
# `make run ARGS=--observability` also needs Prometheus: system-deps.sh installs it when told so.
OBSERVABILITY := $(if $(filter --observability,$(ARGS)),1,0)

run: $(STAMP)
	@SUPPORTMESH_OBSERVABILITY=$(OBSERVABILITY) scripts/system-deps.sh run
	SUPPORTMESH_API_DOCS=$${SUPPORTMESH_API_DOCS:-true} $(BIN)/supportmesh up $(ARGS)

test: $(STAMP)
	@scripts/system-deps.sh test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit and offline tests: no nats-server, redis-server, mesh or browser. Selected by marker (see tests/conftest.py),
# so the offline tests of files in tests/integration and tests/system run too; `pytest tests/unit` is the unit tier alone.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not e2e and not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	@scripts/system-deps.sh run
	$(BIN)/python bench/runtime_bench.py
	$(BIN)/python bench/mesh_bench.py

clean:
	rm -rf .supportmesh test-artifacts .pytest_cache

-include k8s/k3d.mk
