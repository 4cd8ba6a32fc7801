# One entry point for people and CI: `make run` serves, `make test` lints, type-checks and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0: this pin takes the CPU build where pip finds one (this machine, PyTorch's CPU index);
# on a plain Linux machine PyPI's torch is the CUDA build (several GB). To choose, e.g.:
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
# `make test` adds the dev tools and the coreml extra (conversion runs on Linux too).
DEV_EXTRAS ?= dev,coreml

# The spandrel extra's tests run in an environment of their own: spandrel imports torchvision, and
# PyPI's torchvision wheels load only beside the torch build they were made for.
SPANDREL_VENV ?= .venv-spandrel
SPANDREL_TORCH ?= torch==2.14.1 torchvision==0.29.1

CODE := app tests scripts client

.PHONY: install install-dev run test lint typecheck pytest test-spandrel bench evaluate clean

# Serving only: torch and the service's own dependencies.
install: $(VENV)/.installed-serve

$(VENV)/.installed-serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	touch $@

# Everything the tests need: the dev tools, the coreml extra and the client package.
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed-serve pyproject.toml client/pyproject.toml
	$(BIN)/python -m pip install -q -e ".[$(DEV_EXTRAS)]" -e ./client
	touch $@

run: install
	$(BIN)/python -m app

lint: install-dev
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: install-dev
	$(BIN)/mypy app client/upscaler_client scripts tests

pytest: install-dev
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

$(SPANDREL_VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(SPANDREL_VENV)
	$(SPANDREL_VENV)/bin/python -m pip install -q --upgrade pip
	$(SPANDREL_VENV)/bin/python -m pip install -q $(SPANDREL_TORCH)
	$(SPANDREL_VENV)/bin/python -m pip install -q -e ".[dev,spandrel]" -e ./client
	touch $@

test-spandrel: $(SPANDREL_VENV)/.installed
	UPSCALER_TEST_REQUIRE_SPANDREL=1 $(SPANDREL_VENV)/bin/python -m pytest -q -m spandrel

bench: install-dev
	$(BIN)/python scripts/bench.py

evaluate: install-dev
	$(BIN)/python scripts/evaluate.py

clean:
	rm -rf $(VENV) $(SPANDREL_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info client/*.egg-info
