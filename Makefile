# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies in the local wheel folder of the project's machines;
# installing it first stops pip from fetching a multi-GB CUDA build. Override on a GPU box:
#   make setup TORCH="torch"
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test` (0: one process, what CI runs today). `TEST_WORKERS=2` runs
# one worker per core; each loads its own bundled model (~2 GB with the test fixtures), and
# `--dist loadgroup` keeps tests that share Ray or Chromium on one worker (tests/conftest.py).
# Not yet timed against serial on an idle 2-core machine, so not the default.
TEST_WORKERS ?= 0

.PHONY: setup demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/scope demo

test: setup
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
