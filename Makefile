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
	@echo "make demo   - simulated IEDs + receiver + gateway + operator panel (Ctrl-C to stop)"
	@echo "make test   - lint, type-check and run the test suite"
	@echo "make bench  - run the benchmarks (bench/)"
	@echo "make hil    - run every HIL scenario (hil_tests/scenarios) with JUnit + HTML in test-output/hil"
	@echo "make wheelhouse PLATFORM=manylinux2014_aarch64 - wheels for an offline install (deploy/install.sh)"

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
	$(BIN)/python -m bench.panel

# HIL scenarios (docs/hil.md): every scenario of hil_tests/scenarios against the simulated substation.
.PHONY: hil
hil: $(TEST_STAMP) system-deps services
	$(BIN)/python -m hil_tests run --junit test-output/hil/junit.xml --report test-output/hil hil_tests/scenarios/*.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-data *.egg-info

# --- offline installs: `deploy/install.sh --wheelhouse wheelhouse/<platform>` (docs/deployment.md) ---
# make wheelhouse [PLATFORM=manylinux2014_aarch64|manylinux2014_x86_64] [PYVER=311] [GLIBC=36]
# The project's wheel plus a cp$(PYVER) binary wheel (or a pure-Python one) of every runtime dependency for the
# target, resolved for that platform by pip (not for this machine), into wheelhouse/<platform>/ with SHA256SUMS.
# GLIBC: the target's glibc minor version (Debian bookworm / Raspberry Pi OS: 2.36); wheels tagged
# manylinux_2_17 .. manylinux_2_$(GLIBC) (and manylinux2014) run there. Needs PyPI or a mirror with those wheels.
.PHONY: wheelhouse
PLATFORM   ?= manylinux2014_aarch64
PYVER      ?= 311
GLIBC      ?= 36
WHEELHOUSE ?= wheelhouse/$(PLATFORM)
WHEEL_ARCH := $(lastword $(subst manylinux2014_, ,$(PLATFORM)))
WHEEL_PLATFORMS := --platform $(PLATFORM) $(foreach v,$(shell seq 17 $(GLIBC)),--platform manylinux_2_$(v)_$(WHEEL_ARCH))

wheelhouse: | $(BIN)/python
	@case "$(PLATFORM)" in manylinux2014_aarch64|manylinux2014_x86_64) ;; \
	  *) echo "error: PLATFORM must be manylinux2014_aarch64 or manylinux2014_x86_64, not '$(PLATFORM)'"; exit 2;; esac
	rm -rf "$(WHEELHOUSE).tmp" && mkdir -p "$(WHEELHOUSE).tmp"
	@# the project's wheel, built from a clean copy of the tree (a stale build/ never leaks into it)
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	  tar -c --exclude=./.venv --exclude=./.git --exclude=./wheelhouse --exclude=./build --exclude=./dist \
	    --exclude='*.egg-info' --exclude=./demo-data --exclude=./data --exclude='*.duckdb*' \
	    --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache . \
	  | tar -x -C "$$src" && \
	  $(BIN)/python -m pip wheel --quiet --no-deps -w "$(WHEELHOUSE).tmp" "$$src"
	@# every runtime dependency, for the target (pip download resolves them for --platform, not for this machine)
	$(BIN)/python -m pip download --quiet --only-binary=:all: $(WHEEL_PLATFORMS) \
	  --python-version $(PYVER) --implementation cp --abi cp$(PYVER) -d "$(WHEELHOUSE).tmp" \
	  "$(WHEELHOUSE).tmp"/substation_gateway-*.whl \
	  || { echo "error: could not get cp$(PYVER) wheels for $(PLATFORM) (pip says why above): 'make wheelhouse'"; \
	       echo "       needs PyPI or a mirror that has them (PIP_INDEX_URL); no wheelhouse was written"; \
	       rm -rf "$(WHEELHOUSE).tmp"; exit 1; }
	cd "$(WHEELHOUSE).tmp" && sha256sum *.whl > SHA256SUMS
	rm -rf "$(WHEELHOUSE)" && mv "$(WHEELHOUSE).tmp" "$(WHEELHOUSE)"
	@echo "wheelhouse: $(WHEELHOUSE) ($$(ls "$(WHEELHOUSE)"/*.whl | wc -l) wheels); install offline on the target with:"
	@echo "  sudo deploy/install.sh --wheelhouse $(WHEELHOUSE)"
