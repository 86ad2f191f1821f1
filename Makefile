# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test lint typecheck pytest bench venv deps-all deps-dev system-deps clean arm64-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(BIN)/python

# Stamp files so a second `make test` does not reinstall everything.
$(VENV)/.all-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[all]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[all,dev]'
	touch $@ $(VENV)/.all-installed

deps-all: $(VENV)/.all-installed
deps-dev: $(VENV)/.dev-installed

# mosquitto for the broker fixtures, chromium for the report test.
system-deps:
	bash scripts/install-system-deps.sh

demo: deps-all
	$(BIN)/edgefleet demo

lint: deps-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: deps-dev
	$(BIN)/mypy core/edgefleet/core

pytest: deps-dev system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: deps-dev system-deps
	@for b in bench/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

# The agent on an emulated Raspberry Pi OS 64-bit (debootstrap + qemu-user-static, root
# needed; several minutes; not part of `make test`). Prints one JSON line.
arm64-check: deps-dev
	$(BIN)/python scripts/arm64_check.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
