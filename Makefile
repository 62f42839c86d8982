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
	@echo "make bench  benchmark against raw Postgres, Redis and etcd (BENCH_ARGS='--seconds 2 --only 1,5')"

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

# The benchmark (bench/README.md): its own embedded Postgres and Valkey in a temp folder, etcd
# when Debian's etcd-server is installed (apt-get install -y etcd-server), results in bench/results/.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: export SECRET_KEY ?= bench-only-$(shell date +%s)-not-a-production-secret
bench: $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
