# Developer entry points. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
# The pinned pyenv interpreter when present (`python3` on PATH is a slow pyenv shim here).
BOOT_PYTHON := $(firstword $(wildcard /root/.pyenv/versions/3.11.7/bin/python) \
                           $(shell command -v python3.11 2>/dev/null) $(shell command -v python3 2>/dev/null))
# Re-installs only when pyproject.toml changes.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
DEMO_CONFIG ?= examples/sklearn-digits/config.yml

.PHONY: venv lint test compose-test demo up infra down status bench clean

# Then the project's bytecode: an editable install never writes it, and with
# PYTHONDONTWRITEBYTECODE set (as on this machine) every CLI call and service start would
# compile the project again (~60 ms). Up-to-date files are skipped.
venv: $(STAMP)
	$(PY) -m compileall -q shared services tunebus aml_standin >/dev/null

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(BOOT_PYTHON)"; $(BOOT_PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# editable_mode=compat: a plain path entry instead of an import-hook finder, which would cost
	# every interpreter start (each local trial's too) about 9 ms of imports.
	$(PY) -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
		-e '.[test,examples,aml]' torch==2.13.0
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services tunebus aml_standin

# pytest starts RabbitMQ and Azurite itself when an integration test needs them (tests/conftest.py).
# Lint and type findings fail the target too, but only after pytest has run, so one CI run
# reports all three.
test: venv
	lint_rc=0; $(VENV)/bin/ruff check . || lint_rc=$$?; \
	type_rc=0; $(VENV)/bin/mypy shared services tunebus aml_standin || type_rc=$$?; \
	$(VENV)/bin/pytest -q $(PYTEST_ARGS); \
	if [ $$lint_rc -ne 0 ]; then echo "ruff check failed (see above)" >&2; exit $$lint_rc; fi; \
	if [ $$type_rc -ne 0 ]; then echo "mypy failed (see above)" >&2; exit $$type_rc; fi

# The stack in Docker, for real (tests/compose; README: Deployment): installs docker.io and a
# compose if missing, starts dockerd if none answers (stopped again after), pulls the base images
# or builds stand-ins where no registry answers, builds the image, then up, experiments from the
# host, scale, kills, down/up, the AML stand-in; `down -v` at the end. Prints each step's time.
compose-test: venv
	$(VENV)/bin/pytest -s -q --timeout 2400 -p no:cacheprovider tests/compose $(PYTEST_ARGS)

# The whole stack locally, then one experiment end to end; exits with the CLI's status.
demo: venv
	deploy/local up
	@echo "dashboard: $$(deploy/local url)"
	eval "$$(deploy/local env)"; $(VENV)/bin/tunebus create --config $(DEMO_CONFIG) --wait

up: venv
	deploy/local up

infra:
	deploy/local up --infra-only

down:
	deploy/local down

status:
	deploy/local status

# Every script in benchmarks/ against the local stack (each starts it if needed); BENCH_ARGS pass through.
bench: venv
	deploy/local up
	for script in benchmarks/*.py; do echo "=== $$script"; $(PY) "$$script" $(BENCH_ARGS); done

clean: down
	deploy/local down --purge
