# Two commands do everything: `make run` and `make test` (each runs the idempotent set-up first).
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= smoke
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: lock setup check run test test-fast test-containers containers containers-runtime bench bench-datagen ui stack stack-down clean

setup:
	@bash infra/setup.sh

run: setup
	$(BIN)/sciflow run nightly --scale $(SCALE)

# ruff (lint + format), mypy on the libraries, the import contract (layers, no circles, no Prefect/MLflow in libraries)
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check
	$(BIN)/python -m pytest -q --durations=15

# Flows in containers (infra/CLUSTER.md section 8): the runtime (Debian's docker.io, debootstrap,
# docker compose v2; root), the images, then the container test (a docker work pool; the compose
# stack up, the nightly smoke through it, down -v). .ci/run calls it where the runtime can be had.
containers-runtime:
	@bash infra/cluster/runtime.sh

containers: setup containers-runtime
	CLUSTER_ALLOW_DIRTY=$${CLUSTER_ALLOW_DIRTY:-} infra/cluster/build.sh --local

test-containers: setup containers-runtime
	$(BIN)/python -m pytest -q -rs -s tests/system/test_containers.py

test-fast: check
	$(BIN)/python -m pytest -q -m "not slow"

bench-datagen: setup
	$(BIN)/sciflow bench datagen --scale $(SCALE) --out results/datagen-$(SCALE).json

ui: setup
	@$(BIN)/sciflow ui

stack: setup
	$(BIN)/sciflow stack up

stack-down:
	$(BIN)/sciflow stack down

# a project-local state folder (SCIFLOW_HOME=$PWD/.sciflow make run); the default one is `sciflow config --get home`
clean:
	rm -rf .sciflow

# Re-resolve requirements.lock and infra/build.lock from pyproject.toml's ranges (after changing a
# dependency; current pins are kept where they still fit, `make lock UPGRADE=1` takes the newest releases);
# commit both files. A failed resolution keeps the old lock.
lock:
	@test -x $(BIN)/python || python3.11 -m venv $(VENV)
	$(BIN)/python infra/lock.py lock $(BIN)/python $(if $(UPGRADE),--upgrade)
