# Memory Admin: `make run` and `make test` work from a fresh clone with nothing but python3.
# With DATABASE_URL / REDIS_URL unset, the embedded Postgres and Valkey under ./var are used.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install: a requirements file newer than its stamp means reinstall.
# `make run` installs only what runs (requirements.txt); `make test` and `make lint` add the
# test tools (requirements-dev.txt).
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help install run test lint demo bench

help:
	@echo "make run    migrate, then serve web and relay (embedded Postgres/Valkey unless DATABASE_URL/REDIS_URL are set)"
	@echo "make test   run the test suite (extra pytest arguments: PYTEST_ARGS='-k locks -x')"
	@echo "make lint   ruff check and format, import-linter's layering contracts, sync client current"
	@echo "make demo   run the demo agents against a running server (DEMO_SECONDS=30 bounds it)"
	@echo "make bench  benchmark against raw Postgres, Redis and etcd (BENCH_ARGS='--seconds 2 --only 1,5')"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(DEV_STAMP)

# A development run: DEBUG on unless the caller says otherwise, so the dev secret is accepted.
run demo: export DEBUG ?= 1

run: $(STAMP)
	$(PY) manage.py serve

test: $(DEV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Layering (import-linter, contracts in pyproject.toml): the client under client/ is the one
# checked, whichever checkout an editable install points at.
lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	PYTHONPATH=client $(VENV)/bin/lint-imports
	$(PY) client/generate_sync.py --check

# DEMO_SECONDS bounds the run (default 120; 0 runs until Ctrl-C); DEMO_ARGS adds options.
demo: $(STAMP)
	$(PY) manage.py demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS)) $(DEMO_ARGS)

# The benchmark (bench/README.md): its own embedded Postgres and Valkey in a temp folder, etcd
# when Debian's etcd-server is installed (apt-get install -y etcd-server), results in bench/results/.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: export SECRET_KEY ?= bench-only-$(shell date +%s)-not-a-production-secret
bench: $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
