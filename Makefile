# The common jobs. `make test` is what CI runs (.ci/run); it installs what it needs by itself.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: demo lock image test lint typecheck pytest deps system-deps npm-deps bench docs dashboards clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[test,bench,discovery]'
	touch $@

deps: $(BIN)/.installed

# The demo gets a venv of its own with only what the exporter needs (no test or bench tools), so a
# first look installs in seconds.
DEMO_VENV ?= .venv-demo
$(DEMO_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q -e .
	touch $@

demo: $(DEMO_VENV)/bin/.installed
	$(DEMO_VENV)/bin/lektrico-exporter --demo 20

# Refresh the image's lock files: the newest releases that pyproject.toml allows, with the hash
# of every file of each (so any platform's build checks what it downloads). Commit the result.
LOCK_VENV ?= .venv-lock
COMPILE = $(LOCK_VENV)/bin/pip-compile -q --upgrade --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q pip-tools
	$(COMPILE) --output-file requirements.lock pyproject.toml
	$(COMPILE) --allow-unsafe --output-file requirements-build.lock requirements-build.in

# The container image with podman on a Debian base made here (no registry needed).
image: system-deps
	bash scripts/build-image.sh

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
	rm -rf $(VENV) $(DEMO_VENV) $(LOCK_VENV) .mypy_cache .pytest_cache .ruff_cache node_modules
