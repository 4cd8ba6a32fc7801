# One entry point for people and CI: `make run` serves, `make test` lints, type-checks and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; for CUDA use e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,coreml

# The spandrel extra's tests run in an environment of their own: spandrel imports torchvision, and
# PyPI's torchvision wheels load only beside the torch build they were made for.
SPANDREL_VENV ?= .venv-spandrel
SPANDREL_TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install run test lint typecheck pytest test-spandrel bench evaluate clean

install: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

run: install
	$(BIN)/python -m app

lint: install
	$(BIN)/ruff check app tests scripts
	$(BIN)/ruff format --check app tests scripts

typecheck: install
	$(BIN)/mypy app

pytest: install
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

$(SPANDREL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SPANDREL_VENV)
	$(SPANDREL_VENV)/bin/python -m pip install -q --upgrade pip
	$(SPANDREL_VENV)/bin/python -m pip install -q $(SPANDREL_TORCH)
	$(SPANDREL_VENV)/bin/python -m pip install -q -e ".[dev,spandrel]"
	touch $@

test-spandrel: $(SPANDREL_VENV)/.installed
	UPSCALER_TEST_REQUIRE_SPANDREL=1 $(SPANDREL_VENV)/bin/python -m pytest -q -m spandrel

bench: install
	$(BIN)/python scripts/bench.py

evaluate: install
	$(BIN)/python scripts/evaluate.py

clean:
	rm -rf $(VENV) $(SPANDREL_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
