# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies in the local wheel folder of the project's machines;
# installing it first stops pip from fetching a multi-GB CUDA build. Override on a GPU box:
#   make setup TORCH="torch"
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test` (CI runs this). One worker per core, each with one torch
# thread (tests/conftest.py): most tests run tiny models, where a second thread only adds overhead,
# so two workers finish far sooner than one process with two threads. Each worker loads its own
# bundled model (~2 GB with the test fixtures); `--dist loadgroup` keeps tests that share Ray or
# Chromium on one worker. `TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-all test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/scope demo

# CI runs `make test`: everything but the `heavy` tests (over a minute each), which `make test-all` adds.
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not heavy"

test-all: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

lint: setup
	$(BIN)/ruff check scope tests scripts
	$(BIN)/ruff format --check scope tests scripts
	$(BIN)/mypy

bench: setup
	$(BIN)/python scripts/bench_generate.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
