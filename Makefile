# gnomon: `make run` shows NTS end to end on loopback, `make test` runs every test.
# Both set up everything they need on a fresh Debian machine (Python 3.11).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TIME_STATE := $(VENV)/time-service.before
export DEBIAN_FRONTEND := noninteractive

.PHONY: setup peers run test lint typecheck bench clean

$(STAMP): pyproject.toml
	@# Debian ships venv's ensurepip in python3-venv: install it first rather than fail.
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		echo "make: installing python3-venv (python3 -m venv needs it)"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

peers:
	bash scripts/install-peers.sh

run: setup
	$(PY) -m gnomon.demo

# The host's time service (packages, unit enablement) must be the same after the
# setup and the tests as before: scripts/time-service-state.sh compares.
test: setup
	@bash scripts/time-service-state.sh >$(TIME_STATE)
	bash scripts/install-peers.sh
	@status=0; $(PY) -m pytest -q || status=$$?; \
		bash scripts/time-service-state.sh --check $(TIME_STATE) || status=1; exit $$status

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup peers
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .peers
