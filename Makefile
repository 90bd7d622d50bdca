# Both targets create .venv when it is missing and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-under-load lint bench bench-quick mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/syncer demo --dir ./demo-mirror

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check syncer tests migrations bench mutation
	$(BIN)/ruff format --check syncer tests migrations bench mutation
	$(BIN)/mypy

# Three workers on two cores: most tests wait on real processes and sockets, and with two workers
# the machine was 1.3 cores busy (fresh clone, this machine: 10 min 4 s with two, 7 min 55 s with
# three, the same 13.5 min of CPU). Work stealing: a worker that runs out takes tests queued for
# another, so a long test queued late does not leave the others idle at the end.
test: lint
	$(BIN)/pytest -n 3 --dist worksteal

# The suite on a busy machine, as CI machines often are: two CPU-bound processes beside it for its
# whole run. A test's time bound must catch a hang, never this slowness.
test-under-load: $(VENV)/.dev-installed
	trap 'kill $$busy' EXIT; yes > /dev/null & busy=$$!; yes > /dev/null & busy="$$busy $$!"; \
	$(BIN)/pytest -n 3 --dist worksteal

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run --scale full

bench-quick: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run --scale quick

# Mutation testing of the critical path (slow: not part of `test` or CI). mutmut is installed here
# only; the report lands in mutation/report.md.
mutate: $(VENV)/.dev-installed
	$(BIN)/python -m pip install --quiet 'mutmut>=3.3,<4'
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python mutation/report.py

clean:
	rm -rf $(VENV) demo-mirror mutants .pytest_cache .mypy_cache .ruff_cache
