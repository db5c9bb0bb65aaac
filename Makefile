# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
# Needs only Python 3.11+ and make; Debian packages the tests need are installed with apt-get when run as
# root, otherwise the missing ones are named with the command to install them.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall when pyproject.toml changes.
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Debian packages named like their command, looked up on PATH and in /usr/sbin (mosquitto lives there).
# chromium: the panel's browser tests (Playwright drives Debian's build, never a downloaded one).
SYSTEM_PACKAGES_TEST := socat mosquitto chromium

.PHONY: demo test lint typecheck unit bench clean venv system-deps services help

help:
	@echo "make demo   - simulated IEDs + receiver + gateway + status page (Ctrl-C to stop)"
	@echo "make test   - lint, type-check and run the test suite"
	@echo "make bench  - run the benchmarks (bench/)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed, found " + sys.version' \
	  || { echo "error: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	@touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(STAMP)

venv: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES_TEST); do command -v $$p >/dev/null 2>&1 || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: missing system packages:$$missing"; \
	    echo "       install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# The receiver's PostgreSQL backend is tested against a real server on 127.0.0.1:5432 (trust auth, db "test").
services:
	@if ! $(BIN)/python -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2).close()' 2>/dev/null; then \
	  if [ "$$(id -u)" = "0" ] && command -v pg_ctlcluster >/dev/null; then \
	    echo "starting PostgreSQL"; pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	  else \
	    echo "error: PostgreSQL is not listening on 127.0.0.1:5432 (the receiver tests need it);"; \
	    echo "       start it, e.g.: sudo pg_ctlcluster \$$(ls /etc/postgresql) main start"; exit 1; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/gateway demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check .


typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP) system-deps services
	$(BIN)/python -m pytest -q

test: $(TEST_STAMP) system-deps services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP) system-deps services
	$(BIN)/python -m bench.poll
	$(BIN)/python -m bench.store
	$(BIN)/python -m bench.sync
	$(BIN)/python -m bench.outage
	$(BIN)/python -m bench.analytics
	$(BIN)/python -m bench.protection

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-data *.egg-info
