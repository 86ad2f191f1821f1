# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test test-fast lint typecheck pytest bench venv deps-all deps-dev system-deps clean arm64-check

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

# Every source root: the roles and the demo, not only core.
SOURCE_ROOTS := core/edgefleet/core packager/edgefleet/packager agent/edgefleet/agent \
	hub/edgefleet/hub demo/edgefleet/demo

typecheck: deps-dev
	$(BIN)/mypy $(SOURCE_ROOTS)

# The pure-logic lane: no broker, browser, database server or other process
# (tests/support/marker_guard.py fails a test that starts one without its marker).
FAST_MARKERS := not mqtt and not subprocess and not postgres and not chromium and not slow

# The pure-logic lane on two workers, then everything that starts a process, a broker,
# a browser or a database, one test at a time (their timing-sensitive waits were made for
# a machine they do not share). Exit code 5 ("no tests collected") is not a failure: a
# PYTEST_ARGS selection may hold tests of one kind only.
pytest: deps-dev system-deps
	$(BIN)/python -m pytest -n 2 -m "$(FAST_MARKERS)" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m "not ($(FAST_MARKERS))" --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: lint typecheck pytest

# Two workers (pytest-xdist): these tests share nothing but the CPU.
test-fast: deps-dev
	$(BIN)/python -m pytest -q -n 2 -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

bench: deps-dev system-deps
	@for b in bench/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

# The agent on an emulated Raspberry Pi OS 64-bit (debootstrap + qemu-user-static, root
# needed; several minutes; not part of `make test`). Prints one JSON line.
arm64-check: deps-dev
	bash scripts/install-system-deps.sh debootstrap qemu-user-static
	$(BIN)/python scripts/arm64_check.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
