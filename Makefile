# Both targets create .venv when it is missing and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[simulator]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/syncer demo --dir ./demo-mirror

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check syncer tests migrations bench
	$(BIN)/ruff format --check syncer tests migrations bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run --scale full

bench-quick: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run --scale quick

clean:
	rm -rf $(VENV) demo-mirror .pytest_cache .mypy_cache .ruff_cache
