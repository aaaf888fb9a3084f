# The common jobs. `make test` is what CI runs (.ci/run); it installs what it needs by itself.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: demo test lint typecheck pytest deps system-deps npm-deps bench docs dashboards clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[test,bench,discovery]'
	touch $@

deps: $(BIN)/.installed

demo: deps
	$(BIN)/lektrico-exporter --demo 20

system-deps:
	bash scripts/install-system-deps.sh

npm-deps:
	bash scripts/install-npm-deps.sh

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: deps
	$(BIN)/mypy

pytest: deps
	$(BIN)/pytest

test: deps system-deps npm-deps lint typecheck pytest

docs: deps
	$(BIN)/python -m exporter.catalogue.docs > docs/metrics.md

dashboards: deps
	$(BIN)/python -m dashboards.generate

bench: deps system-deps
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache node_modules
