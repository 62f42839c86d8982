# Memory Admin: `make run` and `make test` work from a fresh clone with nothing but python3.
# With DATABASE_URL / REDIS_URL unset, the embedded Postgres and Valkey under ./var are used.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install: requirements.txt newer than it means reinstall.
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test lint demo bench

help:
	@echo "make run    migrate, then serve web and relay (embedded Postgres/Valkey unless DATABASE_URL/REDIS_URL are set)"
	@echo "make test   run the test suite (extra pytest arguments: PYTEST_ARGS='-k locks -x')"
	@echo "make lint   ruff check and ruff format --check"
	@echo "make demo   run the demo agents against a running server"
	@echo "make bench  run bench/run.py"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $@

install: $(STAMP)

# A development run: DEBUG on unless the caller says otherwise, so the dev secret is accepted.
run demo: export DEBUG ?= 1

run: $(STAMP)
	$(PY) manage.py serve

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: $(STAMP)
	$(PY) manage.py demo

bench: $(STAMP)
	@if [ -f bench/run.py ]; then $(PY) bench/run.py; else echo "bench/run.py does not exist yet"; fi
